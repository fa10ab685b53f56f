"""Open a text source read-only: a DuckDB table, a SELECT query, or a CSV/TSV/Parquet file.

Shared by every stage that reads rows it did not write: train (labeled rows), adapt
(unlabeled texts) and export's check texts. The reader knows nothing about labels,
sampling or models. `open_source` opens the source as one relation that SELECTs can
read, checks that the columns the caller needs exist, and turns every failure into a
one-line MarketpulseError that names the flag to fix. The database file is opened
read-only through `marketpulse.sql.connect`, so a source is never changed by reading it
and a read waits while a scoring run holds the file for a commit, as every stage does.

The flags differ per command (`--db` for train, `--check-db` for export), so the caller
passes the ones it has in `Flags`; a fix that needs a flag the command lacks (`--query`
for export) is never suggested.

The messages for two kinds of bad input are built here for every stage, score included:
a text column that is not VARCHAR (`not_text_error`: JSON, BLOB, ...) and a file that
is not UTF-8 (`not_utf8_error`: the cause DuckDB gives, and the re-encoding that fixes
it); `not_duckdb_error` is the one for a file that is not a DuckDB database.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# first_line lives in errors.py (sql.py uses it too); importing it here keeps
# `from marketpulse.sources import first_line` working for the stages.
from marketpulse.errors import MarketpulseError, first_line
from marketpulse.sql import (
    connect,
    quote_ident,
    quote_table,
    require_columns,
    spell_table,
    split_table,
)

_VIEW = "__marketpulse_source"
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")
# Seconds a read waits for a process that holds the database for writing. A scoring run
# holds it only while it commits a chunk (see runtime/database.py), so the wait is short
# unless something else keeps the file open.
LOCK_TIMEOUT = 600.0
# DuckDB's words for text that is not UTF-8: the CSV reader's "This file is not utf-8
# encoded" / "Invalid unicode", a Parquet reader's "is not valid UTF8".
_NOT_UTF8 = re.compile(r"not utf-?8 encoded|invalid unicode|not valid utf-?8", re.IGNORECASE)
# The CSV reader's error lists its options, the file among them: "  file = posts.csv".
_ERROR_FILE = re.compile(r"^\s*file = (.+?)\s*$", re.MULTILINE)
# How much of a file that is not UTF-8 is read to tell which re-encoding fixes it.
_SNIFF_BYTES = 8 << 20


@dataclass(frozen=True)
class Flags:
    """The command-line flags that name a source's parts, quoted in error messages."""

    db: str = "--db"
    table: str = "--table"
    query: str | None = "--query"  # None: the command takes no query (export)
    input: str = "--input"

    def with_query(self, sql: str) -> str:
        """How to pass `sql` as the query: `--query "SELECT ..."`. A flag that names a
        file or a query alike takes NAME=SOURCE (evaluate's --domain)."""
        sql = ("NAME=" if self.query == self.input else "") + sql
        return f'{self.query} "{sql}"' if '"' not in sql else f"{self.query} with {sql}"


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
        raise not_duckdb_error(db, exc, flag) from exc


def not_duckdb_error(path: str | Path, exc: BaseException, flag: str) -> MarketpulseError:
    """DuckDB could not open `path` (not a database, a newer format, ...); `flag` named it."""
    return MarketpulseError(
        f"cannot open {path} as a DuckDB database ({first_line(exc)[:240]}); "
        f"pass {flag} with a DuckDB file"
    )


def _string_paths(structure, path: str = "$") -> Iterator[str]:
    """The JSON paths of the string fields in DuckDB's `json_structure` of a value
    (objects only: an array's strings are many texts, not one)."""
    if structure == "VARCHAR":
        yield path
    elif isinstance(structure, dict):
        for key, inner in structure.items():
            plain = key.isidentifier()
            yield from _string_paths(inner, f"{path}.{key}" if plain else f'{path}."{key}"')


def _json_text_key(con, relation_sql: str, col: str) -> str | None:
    """The JSON path of the string field of `col` with the longest texts in a sample of
    its rows ('$.msg.body'); None when there is none, or the sample cannot be read."""
    ident = quote_ident(col)
    sample = f"(SELECT {ident} AS j FROM {relation_sql} WHERE {ident} IS NOT NULL LIMIT 200)"
    try:
        structure = con.execute(f"SELECT json_group_structure(j) FROM {sample}").fetchone()[0]
        paths = list(_string_paths(json.loads(structure))) if structure else []
        if not paths:
            return None
        lengths = ", ".join(f"avg(length(j->>{_sql_string(p)}))" for p in paths)
        averages = con.execute(f"SELECT {lengths} FROM {sample}").fetchone()
    except Exception:  # duckdb.Error, or a structure that is not JSON: no advice
        return None
    return max(zip(paths, averages, strict=True), key=lambda pair: pair[1] or 0)[0]


def _as_text(col: str, col_type: str, json_key: str | None) -> tuple[str, str] | None:
    """(SQL turning the column into text, what that does) for the types that hold
    text in another form; None for the rest (a number or list is not text to classify)."""
    name, kind = spell_table([col]), col_type.upper()
    if kind == "JSON":
        does = "reads the text out of the JSON"
        if json_key:
            does += f" ({_sql_string(json_key)} holds its longest strings)"
        else:
            json_key = "$.text"
            does += " (at the key '$.text': use the one that holds it)"
        return f"{name}->>{_sql_string(json_key)}", does
    if kind == "BLOB":
        return f"decode({name})", "decodes the UTF-8 bytes"
    if kind.startswith("ENUM"):
        return f"CAST({name} AS VARCHAR)", "casts it to VARCHAR"
    return None


def not_text_error(
    what: str,
    col: str,
    col_type: str,
    text_flag: str,
    flags: Flags,
    source_sql: str | None,
    *,
    file: bool = False,
    con=None,
    relation_sql: str | None = None,
) -> MarketpulseError:
    """`what` ("text column 'body'") is `col_type`, not VARCHAR, as one line naming `text_flag`.

    Where SQL turns the type into text (JSON, BLOB, ENUM) the message shows it, as the
    command can take it (`flags`, query None where it has none): a SELECT to pass as the
    query, else a view to pass as the table (made in a DuckDB file passed as the db flag
    when the source is a `file`). `source_sql` is what the SELECT reads: the table, a
    file in quotes, or None for the user's own query. Given the connection `con` and the
    source as SQL there (`relation_sql`), a JSON column's advice names the key that holds
    its text (`_json_text_key`). Shared by score's, explain's and every `open_source`
    check, so one type gets one advice everywhere."""
    message = f"{what} has type {col_type}, not VARCHAR; pass {text_flag} with a text column"
    json_key = None
    if con is not None and relation_sql and col_type.upper() == "JSON":
        json_key = _json_text_key(con, relation_sql, col)
    as_text = _as_text(col, col_type, json_key)
    if as_text is None:
        return MarketpulseError(message)
    expr, does = as_text
    name = spell_table([col])
    select = f"SELECT * REPLACE ({expr} AS {name}) FROM {source_sql}"
    if source_sql is None and flags.query:  # the user's query: say what to select in it
        how = f"or select {expr} AS {name} in {flags.query}, which {does}"
    elif flags.query:
        how = f"or pass {flags.with_query(select)}, which {does}"
    else:
        where = f" in a DuckDB file passed as {flags.db}" if file else ""
        how = f"or make a view that {does}{where} and pass it as {flags.table}: "
        how += f"CREATE VIEW text_view AS {select}"
    return MarketpulseError(f"{message}, {how}")


def is_not_utf8(exc: BaseException) -> bool:
    """The DuckDB error says the text it read is not UTF-8."""
    return bool(_NOT_UTF8.search(str(exc)))


def _utf8_cause(exc: BaseException) -> str:
    """DuckDB's first line (with the line number) and its line saying the text is not UTF-8."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if _NOT_UTF8.search(line)), None)
    return f"{lines[0]}: {detail}" if detail else first_line(exc)


def _legacy_encoding(path: Path) -> str | None:
    """Which encoding the start of the file `path` looks like it is in, for iconv:
    "utf-8" when it holds UTF-8 characters too (a few bad bytes in a UTF-8 file), "cp1252"
    when it has bytes 0x80-0x9F (Windows quotes and dashes), else "latin1"; None when it
    cannot be read."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            data = f.read(_SNIFF_BYTES)
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    if any(ord(c) > 127 and c != "\ufffd" for c in text):
        return "utf-8"
    return "cp1252" if any(0x80 <= b <= 0x9F for b in data) else "latin1"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def not_utf8_error(
    exc: BaseException, path: str | Path | None, flags: Flags, *, in_query: bool = False
) -> MarketpulseError:
    """The CSV file `path` is not UTF-8: DuckDB's cause (which line) and the fix, in one line.

    The fix is iconv's re-encoding into a new file, from what the file looks like
    (`_legacy_encoding`): Latin-1, Windows-1252, or UTF-8 with some bytes that are not
    (dropped by `iconv -c`). A Latin-1 file can be read as it is with DuckDB's
    `read_csv(..., encoding='latin-1')` (which refuses the bytes 0x80-0x9F), suggested
    where the command takes a query. `in_query`: the file was read by the user's query
    (`path` from DuckDB's message, None when it does not name it)."""
    cause = _utf8_cause(exc)
    if path is None:
        return MarketpulseError(
            f"{flags.query} failed: a file it reads is not UTF-8 ({cause}); re-encode the "
            "file as UTF-8 (e.g. iconv -f latin1 -t utf-8 old.csv > new.csv) and read that"
        )
    path = Path(path)
    lower = path.name.lower()
    head = f"{flags.query} failed: {path}" if in_query else f"cannot read {path}: it"
    head += f" is not UTF-8 ({cause})"
    if lower.endswith(_PARQUET):
        return MarketpulseError(f"{head}; write the Parquet file again with its text in UTF-8")
    encoding = _legacy_encoding(path) or "latin1"
    stem = path.name[:-3] if lower.endswith(".gz") else path.name
    suffix = next((s for s in (".csv", ".tsv", ".txt") if stem.lower().endswith(s)), "")
    new = path.with_name(f"{stem[: len(stem) - len(suffix)]}.utf8{suffix or '.csv'}")
    src, dst = shlex.quote(str(path)), shlex.quote(str(new))  # paths with spaces
    iconv = f"iconv -f {encoding} -t utf-8{' -c' if encoding == 'utf-8' else ''}"
    iconv = f"gunzip -c {src} | {iconv}" if lower.endswith(".gz") else f"{iconv} {src}"
    if encoding == "utf-8":
        fix = f"drop the bytes that are not UTF-8 ({iconv} > {dst})"
    else:
        name = {"latin1": "Latin-1", "cp1252": "Windows-1252"}[encoding]
        fix = f"re-encode it from {name} to UTF-8 ({iconv} > {dst})"
    fix += f" and read {new} instead" if in_query else f" and pass {dst} with {flags.input}"
    if encoding == "latin1" and flags.query:
        read = f"read_csv({_sql_string(str(path))}, encoding='latin-1')"
        if in_query:
            fix += ", or add encoding='latin-1' to its read_csv"
        else:
            fix += f", or read it as Latin-1 with {flags.with_query(f'SELECT * FROM {read}')}"
    return MarketpulseError(f"{head}; {fix}")


def _file_error(exc: BaseException, file: Path, flags: Flags) -> MarketpulseError:
    """A DuckDB error reading the file `file` as one line with the fix."""
    if is_not_utf8(exc):
        return not_utf8_error(exc, file, flags)
    return MarketpulseError(
        f"cannot read {file}: {first_line(exc)}; check that it is valid CSV or Parquet"
    )


def _query_utf8_error(exc: BaseException, flags: Flags) -> MarketpulseError:
    """The user's query read a CSV file that is not UTF-8 (DuckDB's error names it)."""
    named = _ERROR_FILE.search(str(exc))
    return not_utf8_error(exc, named.group(1) if named else None, flags, in_query=True)


def _reading_error(
    exc: BaseException, file: Path | None, query: str | None, flags: Flags
) -> MarketpulseError | None:
    """A DuckDB error while the caller reads the source's rows, as one line when it is the
    source's: a bad row of the file past the part DuckDB sniffed, a file the query reads
    that is not UTF-8. None for the rest (the caller's own SQL), which pass as they are."""
    import duckdb

    if file is not None and (
        is_not_utf8(exc) or isinstance(exc, (duckdb.InvalidInputException, duckdb.IOException))
    ):
        return _file_error(exc, file, flags)
    if query is not None and is_not_utf8(exc):
        return _query_utf8_error(exc, flags)
    return None


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
    connection closes when the block exits. A DuckDB error inside the block that is the
    file's (a row past the part DuckDB sniffed that is not UTF-8 or not CSV) or says a
    file the query reads is not UTF-8 becomes one line, like an error opening it.
    """
    import duckdb

    con = connect_read_only(db, flags.db)
    try:
        name, where = _open_relation(con, table, query, input, flags)
        file = Path(input) if input and not table and not query else None
        # only a table can be missing (the views were just made): that error names the table
        columns = require_columns(
            con, name, require or {}, where=where, db=db, table_flag=flags.table
        )
        if text_flag is not None:
            col = require[text_flag]
            if columns[col].upper() != "VARCHAR":
                if table:
                    source_sql = spell_table(split_table(table))
                else:
                    source_sql = None if file is None else _sql_string(str(file))
                raise not_text_error(
                    f"column {col!r} of {where}",
                    col,
                    columns[col],
                    text_flag,
                    flags,
                    source_sql,
                    file=file is not None,
                    con=con,
                    relation_sql=quote_table(name),
                )
        try:
            yield Relation(con, quote_table(name), where, columns)
        except duckdb.Error as exc:
            error = _reading_error(exc, file, None if table else query, flags)
            if error is None:
                raise
            raise error from exc
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
            if is_not_utf8(exc):
                raise _query_utf8_error(exc, flags) from exc
            raise MarketpulseError(f"{flags.query} failed: {first_line(exc)}; fix the SQL") from exc
        return _VIEW, "the query"
    if not input:
        named = list(dict.fromkeys(f for f in (flags.table, flags.query, flags.input) if f))
        raise MarketpulseError(f"pass one of {', '.join(named[:-1])} or {named[-1]}")
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
        raise _file_error(exc, path, flags) from exc
    return _VIEW, str(input)
