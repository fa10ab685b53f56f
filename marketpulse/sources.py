"""Open a text source read-only: a DuckDB table, a SELECT query, or a CSV/TSV/Parquet file.

Shared by every stage that reads rows it did not write: train (labeled rows), adapt
(unlabeled texts) and export's check texts. The reader knows nothing about labels,
sampling or models. `open_source` opens the source as one relation that SELECTs can
read, checks that the columns the caller needs exist, and turns every failure into a
one-line MarketpulseError that names the flag to fix. The database file is opened
read-only through `marketpulse.sql.connect`, so a source is never changed by reading it
and a read waits while a scoring run holds the file for a commit, as every stage does.

The flags differ per command (`--db` for train, `--check-db` for export), so the caller
passes the ones it has in `Flags`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# first_line lives in errors.py (sql.py uses it too); importing it here keeps
# `from marketpulse.sources import first_line` working for the stages.
from marketpulse.errors import MarketpulseError, first_line
from marketpulse.sql import connect, quote_table, require_columns

_VIEW = "__marketpulse_source"
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")
# Seconds a read waits for a process that holds the database for writing. A scoring run
# holds it only while it commits a chunk (see runtime/database.py), so the wait is short
# unless something else keeps the file open.
LOCK_TIMEOUT = 600.0


@dataclass(frozen=True)
class Flags:
    """The command-line flags that name a source's parts, quoted in error messages."""

    db: str = "--db"
    table: str = "--table"
    query: str = "--query"
    input: str = "--input"


@dataclass(frozen=True)
class Relation:
    """An open source: `con.execute(f"SELECT ... FROM {name}")` reads its rows."""

    con: Any  # duckdb.DuckDBPyConnection, closed when `open_source` exits
    name: str  # the quoted table, or the temp view over the query or file
    where: str  # "table 'news'", "the query" or the file path, for messages
    columns: dict[str, str]  # {column: DuckDB type}


def connect_read_only(db: str | Path | None, flag: str = "--db", timeout: float = LOCK_TIMEOUT):
    """A read-only connection to `db`, or an in-memory one when there is no database.

    Waits up to `timeout` seconds while another process holds `db` for writing.
    """
    import duckdb

    if not db:
        return duckdb.connect(":memory:")
    if not Path(db).is_file():
        raise MarketpulseError(f"database {db} not found; pass {flag} with an existing DuckDB file")

    def waiting(seconds: float, error: str) -> None:
        print(f"marketpulse: waiting for a writer to commit to {db} ({error})", file=sys.stderr)

    try:
        return connect(
            db,
            read_only=True,
            timeout=timeout,
            on_wait=waiting,
            fix=f"close the process that writes it, or pass a copy with {flag}",
        )
    except duckdb.Error as exc:
        raise MarketpulseError(
            f"cannot open {db} as a DuckDB database ({first_line(exc)}); "
            f"pass {flag} with a DuckDB file"
        ) from exc


@contextmanager
def open_source(
    *,
    db: str | Path | None = None,
    table: str | None = None,
    query: str | None = None,
    input: str | Path | None = None,
    require: Mapping[str, str] | None = None,
    flags: Flags = Flags(),
    text_flag: str | None = None,
) -> Iterator[Relation]:
    """Open exactly one of `table` (in `db`), `query` (on `db`, or in memory) or `input`.

    `require` maps flag -> column: each column must exist, else the error names the flag
    (`{"--text-col": "body"}`); the column of `text_flag` must be VARCHAR, as `score`
    requires (a BLOB, list or number cast to text would be scored as garbage). The
    connection closes when the block exits.
    """
    con = connect_read_only(db, flags.db)
    try:
        name, where = _open_relation(con, table, query, input, flags)
        # only a table can be missing (the views were just made): that error names the table
        columns = require_columns(
            con, name, require or {}, where=where, db=db, table_flag=flags.table
        )
        if text_flag is not None:
            col = require[text_flag]
            if columns[col].upper() != "VARCHAR":
                raise MarketpulseError(
                    f"column {col!r} of {where} has type {columns[col]}, not VARCHAR; pass "
                    f"{text_flag} with a text column (or CAST it in a query)"
                )
        yield Relation(con, quote_table(name), where, columns)
    finally:
        con.close()


def _check_one_select(con, query: str, flag: str) -> None:
    """Refuse a query that is not exactly one SELECT (DuckDB's parser says which it is)."""
    import duckdb

    try:
        kinds = [statement.type.name for statement in con.extract_statements(query)]
    except duckdb.Error as exc:
        raise MarketpulseError(f"{flag} failed: {first_line(exc)}; fix the SQL") from exc
    if kinds != ["SELECT"]:
        got = {1: f"a statement of type {kinds[0]}"}.get(len(kinds), f"{len(kinds)} statements")
        if kinds == ["MULTI"]:  # PIVOT and friends expand to several statements
            got = "a PIVOT or other multi-part statement (wrap it: SELECT * FROM (...))"
        raise MarketpulseError(
            f"{flag} must be one SELECT statement (rows to read), not {got}; "
            'pass e.g. "SELECT text, label FROM posts WHERE ..."'
        )


def _open_relation(con, table, query, input, flags: Flags) -> tuple[str, str]:
    """Return (relation name, description for messages) of the one source given."""
    import duckdb

    if table:
        return table, f"table {table!r}"
    if query:
        _check_one_select(con, query, flags.query)
        try:
            con.execute(f"CREATE TEMP VIEW {_VIEW} AS {query}")
        except duckdb.Error as exc:
            raise MarketpulseError(f"{flags.query} failed: {first_line(exc)}; fix the SQL") from exc
        return _VIEW, "the query"
    if not input:
        raise MarketpulseError(f"pass one of {flags.table}, {flags.query} or {flags.input}")
    path = Path(input)
    if not path.is_file():
        raise MarketpulseError(
            f"input file {path} not found; pass {flags.input} with an existing file"
        )
    lower = path.name.lower()
    if not lower.endswith(_PARQUET + _CSV):
        raise MarketpulseError(
            f"cannot tell the format of {path}; pass {flags.input} with a .csv, .tsv or "
            ".parquet file"
        )
    try:
        read = con.read_parquet if lower.endswith(_PARQUET) else con.read_csv
        read(str(path)).to_view(_VIEW)
    except duckdb.Error as exc:
        raise MarketpulseError(
            f"cannot read {path}: {first_line(exc)}; check that it is valid CSV or Parquet"
        ) from exc
    return _VIEW, str(input)
