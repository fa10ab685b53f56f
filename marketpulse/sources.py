"""Open a text source read-only: a DuckDB table, a SELECT query, or a CSV/TSV/Parquet file.

Shared by every stage that reads rows it did not write: train (labeled rows), adapt
(unlabeled texts) and export's check texts. The reader knows nothing about labels,
sampling or models. `open_source` opens the source as one relation that SELECTs can
read, checks that the columns the caller needs exist, and turns every failure into a
one-line MarketpulseError that names the flag to fix. The database file is opened
read-only, so a source is never changed by reading it.

The flags differ per command (`--db` for train, `--check-db` for export), so the caller
passes the ones it has in `Flags`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marketpulse.errors import MarketpulseError
from marketpulse.sql import quote_table

_VIEW = "__marketpulse_source"
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")


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
    name: str  # quoted table name, or the temp view over the query or file
    where: str  # "table 'news'", "the query" or the file path, for messages
    columns: dict[str, str]  # {column: DuckDB type}


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (DuckDB's run to several), else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect_read_only(db: str | Path | None, flag: str = "--db"):
    """A read-only connection to `db`, or an in-memory one when there is no database."""
    import duckdb

    if not db:
        return duckdb.connect(":memory:")
    if not Path(db).is_file():
        raise MarketpulseError(f"database {db} not found; pass {flag} with an existing DuckDB file")
    try:
        return duckdb.connect(str(db), read_only=True)
    except duckdb.Error as exc:
        raise MarketpulseError(
            f"cannot open {db} read-only ({first_line(exc)}); close the process that holds "
            f"it for writing, or pass a copy with {flag}"
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
) -> Iterator[Relation]:
    """Open exactly one of `table` (in `db`), `query` (on `db`, or in memory) or `input`.

    `require` maps flag -> column: each column must exist, else the error names the flag
    (`{"--text-col": "body"}`). The connection closes when the block exits.
    """
    import duckdb

    con = connect_read_only(db, flags.db)
    try:
        name, where = _open_relation(con, table, query, input, flags)
        try:
            described = con.execute(f"DESCRIBE {name}").fetchall()
        except duckdb.Error as exc:  # only a table can be missing: the views were just made
            tables = ", ".join(r[0] for r in con.execute("SHOW TABLES").fetchall()) or "none"
            in_db = f" in {db}" if db else ""
            raise MarketpulseError(
                f"table {table!r} not found{in_db} (tables: {tables}); "
                f"pass {flags.table} with an existing table"
            ) from exc
        columns = {row[0]: row[1] for row in described}
        for flag, column in (require or {}).items():
            if column not in columns:
                raise MarketpulseError(
                    f"column {column!r} not found in {where} (columns: {', '.join(columns)}); "
                    f"pass {flag} with one of them"
                )
        yield Relation(con, name, where, columns)
    finally:
        con.close()


def _open_relation(con, table, query, input, flags: Flags) -> tuple[str, str]:
    """Return (quoted relation name, description for messages) of the one source given."""
    import duckdb

    if table:
        return quote_table(table), f"table {table!r}"
    if query:
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
