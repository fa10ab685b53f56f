"""`marketpulse sql`: SQL against a DuckDB file, for scripts and make targets.

The file is opened read-only, so the SQL cannot change that file (DuckDB still runs
COPY ... TO or ATTACH of another file: this is a tool for the file's owner), and the open is
retried while a scoring run holds the file for a commit (a fraction of a second at a
time; see runtime/database.py), so a script never fails because a nightly is running.
With `write` (`sql --write`: a CREATE VIEW that trends asks for, say) it is opened
read-write as every writer opens it: the open waits while another process (a reader
too) holds the file, and all the statements run in one transaction, committed when the
last one ends: if any fails, none of them changes the file (`DROP VIEW v; CREATE VIEW v
AS ...` with a typo keeps the old view). SQL with its own BEGIN, COMMIT or ROLLBACK is
refused there, before anything runs.

The SQL may hold several statements: DuckDB's parser splits them (a ';' inside a string
or comment stays where it is), they run in order on one connection, and each one that
returns rows gives a result set; SET, CREATE TEMP TABLE and other statements without
rows give none unless they are all there is. Output: aligned text tables, one per result
set, or (for one result set only) JSON (a list of objects) or CSV.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
from pathlib import Path

from marketpulse.display import ljust, width
from marketpulse.errors import MarketpulseError, first_line
from marketpulse.sql import connect

DEFAULT_TIMEOUT = 60.0


Result = tuple[list[str], list]  # (column names, rows) of one statement


def run_queries(
    db: Path,
    sql: str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    one_result: str | None = None,
    write: bool = False,
) -> list[Result]:
    """The result set of each statement of `sql` that returns rows, in order, run on `db`
    opened read-only (read-write with `write`); when none does, the last statement's
    result as DuckDB gives it.

    `one_result` names what takes a single result set (`--json`): SQL with more than one
    statement that returns rows is then refused before any statement runs.
    """
    import duckdb

    db = Path(db)
    con = _connect(db, timeout, write)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:  # a syntax error: nothing has run
            raise MarketpulseError(f"query failed ({first_line(exc)}); {_fix(exc)}") from exc
        if not statements:  # blank, ";" or only comments
            raise MarketpulseError(
                'the query holds no SQL statement; pass one, e.g. "SELECT count(*) FROM scores"'
            )
        shown = [i for i, s in enumerate(statements) if _returns_rows(s)]
        if one_result and len(shown) > 1:
            raise MarketpulseError(
                f"{one_result} prints one result set, but the SQL holds {len(shown)} "
                "statements that return rows; run them one at a time"
            )
        shown = shown or [len(statements) - 1]
        if write:
            own = [i + 1 for i, s in enumerate(statements) if s.type.name == "TRANSACTION"]
            if own:  # theirs and ours cannot nest: a COMMIT would end ours half-way
                raise MarketpulseError(
                    "--write runs all the statements in one transaction; leave out BEGIN, "
                    f"COMMIT and ROLLBACK (statement {own[0]} of {len(statements)} is one)"
                )
            con.begin()
        results = []
        for i, statement in enumerate(statements):
            try:
                relation = con.execute(statement)
                if i in shown:  # the others' results are statuses: Success, Count
                    results.append(_result(relation))
            except duckdb.Error as exc:
                which = (
                    "query" if len(statements) == 1 else f"statement {i + 1} of {len(statements)}"
                )
                raise MarketpulseError(
                    f"{which} failed ({first_line(exc)}){_unchanged(con, write)}; "
                    f"{_fix(exc, write, db)}"
                ) from exc
        if write:
            try:
                con.commit()
            except duckdb.Error as exc:  # the WAL cannot be written, say: DuckDB rolls back
                raise MarketpulseError(
                    f"commit failed ({first_line(exc)}){_unchanged(con, write)}; "
                    f"{_fix(exc, write, db)}"
                ) from exc
        return results
    finally:
        con.close()  # an open --write transaction is rolled back here too


def _connect(db: Path, timeout: float, write: bool = False):
    import duckdb

    if not db.is_file():
        raise MarketpulseError(f"database file {db} not found; pass --db with a DuckDB file")

    def waiting(seconds: float, error: str) -> None:
        who = "another process to close the file" if write else "a writer to commit"
        print(f"marketpulse: waiting for {who} ({error})", file=sys.stderr)

    try:
        return connect(db, read_only=not write, timeout=timeout, on_wait=waiting)
    except duckdb.Error as exc:
        if _denied(exc):  # a DuckDB file all the same: --db is right, the permissions not
            how = "read-write" if write else "read-only"
            raise MarketpulseError(
                f"cannot open {db} {how} ({first_line(exc)}); {_permission_fix(db, write)}"
            ) from exc
        raise MarketpulseError(
            f"cannot open {db} as a DuckDB database ({first_line(exc)}); pass --db "
            "with a DuckDB file"
        ) from exc


def _returns_rows(statement) -> bool:
    """Whether a statement gives rows to show, as DuckDB's own CLI decides: a query, not the
    status of SET, CREATE or COPY. PIVOT (type MULTI) ends in the SELECT that gives its rows."""
    expected = [t.name for t in statement.expected_result_type]
    return statement.type.name == "MULTI" or expected == ["QUERY_RESULT"]


def _result(relation) -> Result:
    if relation.description is None:  # a statement without a result set
        return [], []
    return [d[0] for d in relation.description], relation.fetchall()


def _unchanged(con, write: bool) -> str:
    """After a --write statement or the commit failed: roll the one transaction back (so
    no statement of the SQL changed the file) and say so."""
    if not write:
        return ""
    import duckdb

    with contextlib.suppress(duckdb.Error):  # a failed commit has rolled back already
        con.rollback()
    return "; nothing was changed (--write commits all the statements or none)"


def _denied(exc: Exception) -> bool:
    """Whether a DuckDB error is the operating system refusing a file (EACCES, EPERM, EROFS)."""
    text = str(exc).lower()
    return any(s in text for s in ("permission denied", "read-only file system", "not permitted"))


def _permission_fix(db: Path, write: bool) -> str:
    if not write:
        return f"sql needs read permission on {db}"
    return (
        f"--write needs write permission on {db} and on its folder {db.parent} (DuckDB "
        f"writes {db.name}.wal there as it commits)"
    )


def _fix(exc: Exception, write: bool = False, db: Path | None = None) -> str:
    if "read-only" in str(exc).lower() and not write:
        return (
            "the database is opened read-only, so only queries that read work; pass --write "
            "to run it on the file opened read-write"
        )
    if write and db is not None and _denied(exc):
        return _permission_fix(db, write)
    return "check the SQL"


def _plain(value) -> object:
    """A DuckDB value as one CSV cell: booleans as DuckDB writes them (true/false), lists
    and structs as JSON (not Python's repr; other scripts as they are, not \\u escapes),
    BLOBs as hex (as --json gives them), anything else as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, int | float | str):
        return value
    if isinstance(value, list | tuple | dict):
        return json.dumps(_json_value(value), ensure_ascii=False)
    if isinstance(value, bytes | bytearray):
        return value.hex()
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


def format_results(results: list[Result], style: str) -> str:
    """Result sets as 'table' text, one after another with a blank line between, or one
    result set as 'json' or 'csv' (several would not parse as one JSON list or CSV)."""
    if style != "table" and len(results) != 1:
        raise MarketpulseError(
            f"--{style} prints one result set, not {len(results)}; run the statements one at a time"
        )
    return "\n\n".join(format_rows(columns, rows, style) for columns, rows in results)


def format_rows(columns: list[str], rows: list, style: str) -> str:
    """Rows as 'table', 'json' or 'csv' text."""
    if style == "json":
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:  # an object keeps one value per key: the other column would vanish
            raise MarketpulseError(
                f"--json keys each row by column name, and the result has {len(twice)} "
                f"name(s) used by two columns ({', '.join(map(repr, twice))}); give them "
                "distinct names with AS (e.g. f.bucket AS forecast_bucket)"
            )
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
    # padded by display width: a CJK character takes two terminal columns
    widths = [max([width(c), *(width(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [
        "  ".join(ljust(c, w) for c, w in zip(columns, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(ljust(v, w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells
    ]
    return "\n".join(lines + [f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])
