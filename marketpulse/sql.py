"""SQL identifier handling shared by every stage.

User-supplied table and column names never reach SQL text raw: they are validated
and double-quoted here. Values always travel as bound parameters.
"""

from __future__ import annotations

import re

from marketpulse.errors import MarketpulseError

_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def quote_ident(name: str) -> str:
    """Quote one identifier, doubling embedded quotes (works for any name)."""
    if not name or "\x00" in name:
        raise MarketpulseError(f"invalid SQL identifier {name!r}; pass a non-empty name")
    return '"' + name.replace('"', '""') + '"'


def quote_table(name: str) -> str:
    """Quote a table name that may be schema-qualified: `main.news` -> `"main"."news"`."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 3 or not all(_PART.match(p) for p in parts):
        raise MarketpulseError(
            f"invalid table name {name!r}; use letters, digits and underscores, "
            "optionally qualified as schema.table"
        )
    return ".".join(quote_ident(p) for p in parts)


def table_columns(con, table: str) -> dict[str, str]:
    """Return {column: type} of an existing table or view, or raise naming the fix."""
    try:
        rows = con.execute(f"DESCRIBE {quote_table(table)}").fetchall()
    except MarketpulseError:
        raise
    except Exception as exc:  # duckdb.CatalogException and friends
        tables = [r[0] for r in con.execute("SHOW TABLES").fetchall()]
        listed = ", ".join(tables) if tables else "none"
        raise MarketpulseError(
            f"table {table!r} not found (tables: {listed}); pass --table with an existing table"
        ) from exc
    return {r[0]: r[1] for r in rows}


def require_columns(con, table: str, columns: dict[str, str]) -> dict[str, str]:
    """Check that each column exists; `columns` maps flag name -> column name."""
    have = table_columns(con, table)
    for flag, col in columns.items():
        if col not in have:
            raise MarketpulseError(
                f"column {col!r} not found in table {table!r} (columns: {', '.join(have)}); "
                f"pass {flag} with one of them"
            )
    return have
