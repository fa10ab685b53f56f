"""`marketpulse sql`: one read-only query against a DuckDB file, for scripts and make targets.

The file is opened read-only, so the query cannot change that file (DuckDB still runs
COPY ... TO or ATTACH of another file: this is a tool for the file's owner), and the open is
retried while a scoring run holds the file for a commit (a fraction of a second at a
time; see runtime/database.py), so a script never fails because a nightly is running.
Output: an aligned text table, JSON (a list of objects) or CSV.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

from marketpulse.errors import MarketpulseError, first_line
from marketpulse.sql import connect

DEFAULT_TIMEOUT = 60.0


def run_query(db: Path, sql: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[list[str], list]:
    """(column names, rows) of `sql` run on `db` opened read-only."""
    import duckdb

    db = Path(db)
    if not db.is_file():
        raise MarketpulseError(f"database file {db} not found; pass --db with a DuckDB file")

    def waiting(seconds: float, error: str) -> None:
        print(f"marketpulse: waiting for a writer to commit ({error})", file=sys.stderr)

    try:
        con = connect(db, read_only=True, timeout=timeout, on_wait=waiting)
    except duckdb.Error as exc:
        raise MarketpulseError(
            f"cannot open {db} as a DuckDB database ({first_line(exc)}); pass --db "
            "with a DuckDB file"
        ) from exc
    try:
        relation = con.execute(sql)
        if relation is None:  # blank, ";" or only comments: DuckDB ran nothing
            raise MarketpulseError(
                'the query holds no SQL statement; pass one, e.g. "SELECT count(*) FROM scores"'
            )
        if relation.description is None:  # a statement without a result set
            return [], []
        return [d[0] for d in relation.description], relation.fetchall()
    except duckdb.Error as exc:
        fix = "check the SQL"
        if "read-only" in str(exc).lower():
            fix = "the database is opened read-only, so only queries that read work"
        raise MarketpulseError(f"query failed ({first_line(exc)}); {fix}") from exc
    finally:
        con.close()


def _plain(value) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _json_value(value) -> object:
    """A DuckDB value as strict JSON: lists and structs nested, NaN and infinities null,
    dates and times ISO 8601, bytes as hex, anything else (DECIMAL, UUID, INTERVAL) text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if hasattr(value, "isoformat"):  # date, time, datetime
        return value.isoformat()
    return str(value)


def format_rows(columns: list[str], rows: list, style: str) -> str:
    """Rows as 'table', 'json' or 'csv' text."""
    if style == "json":
        return json.dumps(
            [{c: _json_value(v) for c, v in zip(columns, r, strict=True)} for r in rows],
            indent=2,
            allow_nan=False,
        )
    if style == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else _plain(v) for v in r] for r in rows])
        return out.getvalue().rstrip("\n")
    cells = [["NULL" if v is None else str(v) for v in r] for r in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines + [f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])
