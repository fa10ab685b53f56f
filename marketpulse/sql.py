"""SQL identifier handling shared by every stage.

User-supplied table and column names never reach SQL text raw: they are validated
and double-quoted here. Values always travel as bound parameters.

Opening DuckDB files is shared too: `connect` waits out another process's lock, and
`create_database` creates files in a storage format DuckDB 1.x clients can read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path

from marketpulse.errors import MarketpulseError, first_line

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


def table_names(con, database: str | None = None) -> list[str]:
    """The tables and views of `database` (default: the current one) as a user names them:
    `news` in the main schema, `raw.news` in another; for "not found" messages."""
    rows = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() "
        "WHERE database_name = coalesce(?, current_database()) "
        "UNION ALL SELECT schema_name, view_name FROM duckdb_views() "
        "WHERE database_name = coalesce(?, current_database()) AND NOT internal "
        "ORDER BY schema_name <> 'main', schema_name, table_name",
        [database, database],
    ).fetchall()
    return [name if schema == "main" else f"{schema}.{name}" for schema, name in rows]


class Columns(dict):
    """{column: type} that finds a column in any letter case, as DuckDB does (it resolves
    identifiers case-insensitively, quoted or not, and allows no two columns that differ
    in case only): `"id" in cols` and `cols["id"]` find a column named ID. Iterating
    gives the names as the table spells them."""

    def _actual(self, name):
        if isinstance(name, str) and not dict.__contains__(self, name):
            folded = name.casefold()
            for actual in self:
                if actual.casefold() == folded:
                    return actual
        return name

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, self._actual(name))

    def __getitem__(self, name):
        return dict.__getitem__(self, self._actual(name))

    def get(self, name, default=None):
        return dict.get(self, self._actual(name), default)


def table_columns(con, table: str, *, db=None, table_flag: str = "--table") -> Columns:
    """Return {column: type} of an existing table or view, or raise naming the fix.

    `db` (the file the table should be in) goes into the message when given;
    `table_flag` is the flag that names the table (`--check-table` for export).
    """
    try:
        rows = con.execute(f"DESCRIBE {quote_table(table)}").fetchall()
    except MarketpulseError:
        raise
    except Exception as exc:  # duckdb.CatalogException and friends
        listed = ", ".join(table_names(con)) or "none"
        in_db = f" in {db}" if db else ""
        raise MarketpulseError(
            f"table {table!r} not found{in_db} (tables: {listed}); "
            f"pass {table_flag} with an existing table"
        ) from exc
    return Columns((r[0], r[1]) for r in rows)


def require_columns(
    con,
    table: str,
    columns: Mapping[str, str],
    *,
    where: str | None = None,
    db=None,
    table_flag: str = "--table",
) -> dict[str, str]:
    """Check that each column exists; `columns` maps flag name -> column name.

    `where` names the relation in the message (default "table 'NAME'"); `db` and
    `table_flag` are passed to `table_columns`.
    """
    have = table_columns(con, table, db=db, table_flag=table_flag)
    where = where or f"table {table!r}"
    for flag, col in columns.items():
        if col not in have:
            raise MarketpulseError(
                f"column {col!r} not found in {where} (columns: {', '.join(have)}); "
                f"pass {flag} with one of them"
            )
    return have


# --- opening DuckDB files --------------------------------------------------------------
# DuckDB lets ONE process open a file read-write OR any number open it read-only; the
# two exclude each other through an OS lock on the file. Every stage and the `sql`
# command open files through `connect`, which waits (with backoff, up to a timeout)
# while another process holds a conflicting lock instead of failing at once.

# The storage format of the database files marketpulse creates. DuckDB 2.x writes its
# own format by default, which DuckDB 1.x clients (the 1.x CLI, BI tools that bundle a
# 1.x driver) refuse to open; 'v1.0.0' is read by every DuckDB from 1.0 on. A file
# that already exists keeps the format it has.
DEFAULT_STORAGE_VERSION = "v1.0.0"
_STORAGE_VERSION = re.compile(r"^(v\d+\.\d+\.\d+|latest)$")


def check_storage_version(version: str) -> str:
    if not _STORAGE_VERSION.match(version or ""):
        raise MarketpulseError(
            f"invalid storage version {version!r}; pass a DuckDB version such as "
            f"{DEFAULT_STORAGE_VERSION} or v1.4.0, or 'latest'"
        )
    return version


def create_database(path, storage_version: str = DEFAULT_STORAGE_VERSION) -> None:
    """Create an empty DuckDB file in `storage_version`'s format, unless it exists."""
    import duckdb

    path = Path(path)
    if path.exists():
        return
    if not path.parent.is_dir():
        raise MarketpulseError(
            f"cannot create {path}: folder {path.parent} does not exist; create it or pass "
            "another path"
        )
    version = check_storage_version(storage_version)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH ? AS new_db (STORAGE_VERSION '{version}')", [str(path)])
    except duckdb.Error as exc:
        raise MarketpulseError(
            f"cannot create {path} with storage version {version} "
            f"({first_line(exc)[:200]}); pass another version or path"
        ) from exc
    finally:
        con.close()


def is_lock_conflict(exc: BaseException) -> bool:
    """DuckDB's error for a file another process holds with a conflicting lock."""
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


def connect(
    path,
    *,
    read_only: bool,
    timeout: float,
    on_wait=None,
    config=None,
    fix: str = "close the other connection or raise --lock-timeout",
):
    """`duckdb.connect`, retried with backoff while another process holds the file.

    `on_wait(seconds_waited, first_error_line)` is called when the wait begins and then
    every 30 s. Raises MarketpulseError ending in `fix` once `timeout` seconds have
    passed; other DuckDB errors (not a database file, ...) are raised as they are.
    """
    import duckdb

    start = time.monotonic()
    delay, told = 0.02, None
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except duckdb.Error as exc:
            if not is_lock_conflict(exc):
                raise
            waited = time.monotonic() - start
            if waited >= timeout:
                who = "a writer" if read_only else "another process (a reader or writer)"
                raise MarketpulseError(
                    f"{path} stayed locked by {who} for {waited:.0f}s "
                    f"({first_line(exc)[:160]}); {fix}"
                ) from exc
            if on_wait is not None and (told is None or waited - told >= 30):
                told = waited
                on_wait(waited, first_line(exc))
            time.sleep(min(delay, max(timeout - waited, 0.001)))
            delay = min(delay * 1.5, 0.5)
