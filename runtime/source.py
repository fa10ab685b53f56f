"""Reading the source table: open the databases, check the input, stream pending rows.

The connections themselves come from database.py (read-only for every read here,
the source attached as `marketpulse_source` when it lives in another file than the results).

`check_source` turns every input problem into a one-line error before anything is
written: missing table or column, an id column that is not a plain scalar or holds
NULLs or duplicates, a text column that is not text. A DuckDB error while the rows are
read (a view that fails on some rows, a filter that cannot cast a value) is one line
too, naming the table and the fix (`reading`), wherever the read happens.

Work is the source rows that pass the filter and that this model version has not
scored yet: an anti-join against the results table inside DuckDB. For a base table
it is read in rowid ranges (`pending_range`), each a short query, so no read
transaction stays open while results are committed (DuckDB could not checkpoint them
and would hold them in memory) and each page of the table is read once. A view has
no rowid; its pending rows are staged to Parquet by one streaming query
(`export_pending`), so no connection stays open while they are scored.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from marketpulse.errors import MarketpulseError, first_line
from marketpulse.runtime.where import compile_where
from marketpulse.sources import Flags, not_text_error
from marketpulse.sql import (
    Columns,
    ascii_fold,
    quote_ident,
    quote_table,
    spell_table,
    split_table,
    table_columns,
    table_names,
)
from marketpulse.text import blank_sql

# The name the source file is attached under beside a --results-db. A results file's own
# catalog name is its stem, so a results file named like the alias cannot attach it:
# an unusual name, and `Database.prepare` refuses the one stem that collides.
SOURCE_ALIAS = "marketpulse_source"
_TEXT_TYPES = ("VARCHAR",)
# score and explain read a table (or view) and take no query: a text column that needs SQL
# to become text gets a view to pass as --table
_FLAGS = Flags(query=None)
# Ids that cannot key scores: not comparable exactly, or changed on the way through
# Arrow (a TIMETZ loses its offset, a UHUGEINT above 2**127 wraps)
_BAD_ID_PREFIXES = (
    "STRUCT", "MAP", "UNION", "BLOB", "FLOAT", "DOUBLE", "TIME WITH TIME ZONE", "UHUGEINT",
)  # fmt: skip
# Id types whose values come back from DuckDB and bind again unchanged (Python ints), so
# `pending_range` may bound the scored ids it reads by the range's min and max. Others
# (a collation, an ENUM's declared order, nanoseconds, 'infinity') would not compare the
# same after the round trip, and already scored rows would be scored again.
_RANGED_ID_TYPES = (
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
)  # fmt: skip


@dataclass(frozen=True)
class Source:
    table_sql: str  # quoted, catalog-qualified when attached
    id_col: str
    text_col: str
    id_type: str
    where_sql: str
    where_params: list
    table: str = ""  # as the user named it, for messages
    where: str | None = None  # the filter as the user wrote it, for messages


def read_error(exc: BaseException, table: str, where: str | None = None) -> MarketpulseError:
    """A DuckDB error raised while reading the rows of `table`, as one line with the fix."""
    first = first_line(exc)[:200]
    if where:
        return MarketpulseError(
            f"--where {where!r} fails on the rows of {table!r} ({first}); fix the filter's "
            "values or types (or, for a view, the view)"
        )
    return MarketpulseError(
        f"reading the rows of {table!r} failed ({first}); fix the table or view so that "
        f"`SELECT * FROM {table}` runs, or pass --where to leave the failing rows out"
    )


@contextmanager
def reading(table: str, where: str | None = None):
    """Turn DuckDB errors inside the block (reads of the source rows) into `read_error`.

    Only DuckDB's own reads belong inside: an Arrow stream over a DuckDB query raises the
    query's error as an OSError, so OSError counts as a read error too."""
    import duckdb

    try:
        yield
    except (duckdb.Error, OSError) as exc:
        raise read_error(exc, table, where) from exc


def read_batches(relation, rows: int, source: Source):
    """The relation's rows as Arrow record batches of at most `rows`, streamed; a DuckDB
    error on the way (raised by the stream, mid-table) becomes `read_error`."""
    with reading(source.table, source.where):
        stream = iter(record_batches(relation, rows))
    while True:
        with reading(source.table, source.where):
            batch = next(stream, None)
        if batch is None:
            return
        yield batch


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|KiB|MiB|GiB)\s*", re.I)
_UNITS = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
# DuckDB's cap while the input checks run: they group every id and join the results
# table, and under a low cap DuckDB spills those to disk instead of growing with the
# table. 10M ids, DuckDB alone: peak RSS 446 MiB at 512MB, 195 MiB at 128MB.
CHECK_MEMORY_LIMIT = "128MB"


def checked_size(size: str) -> str:
    if not _SIZE.fullmatch(size):
        raise MarketpulseError(f"invalid memory size {size!r}; use e.g. 512MB or 2GB")
    return size.strip()


def _size_bytes(size: str) -> float:
    number, unit = _SIZE.fullmatch(checked_size(size)).groups()
    return float(number) * _UNITS[unit.lower()]


@contextmanager
def low_memory(con, memory_limit: str):
    """Run the input checks under CHECK_MEMORY_LIMIT (or the run's own, if lower)."""
    cap = min(memory_limit, CHECK_MEMORY_LIMIT, key=_size_bytes)
    con.execute(f"SET memory_limit = '{checked_size(cap)}'")
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = '{checked_size(memory_limit)}'")


def check_source(
    con, table: str, id_col: str, text_col: str, where: str | None, attached: bool
) -> Source:
    table_sql = quote_table(table)
    if attached:
        if len(split_table(table)) == 3:
            raise MarketpulseError(
                f"--table {table!r} names a catalog; with --results-db pass schema.table only"
            )
        table_sql = f"{SOURCE_ALIAS}.{table_sql}"
        cols = _attached_columns(con, table_sql, table)
    else:
        cols = table_columns(con, table)
    for flag, col in (("--id-col", id_col), ("--text-col", text_col)):
        if col not in cols:
            raise MarketpulseError(
                f"column {col!r} not found in table {table!r} (columns: {', '.join(cols)}); "
                f"pass {flag} with one of them"
            )
    if ascii_fold(id_col) == ascii_fold(text_col):  # DuckDB's names ignore A-Z case
        raise MarketpulseError(
            "--id-col and --text-col name the same column; pass distinct columns"
        )
    id_type, text_type = cols[id_col], cols[text_col]
    if id_type.upper().startswith(_BAD_ID_PREFIXES) or id_type.endswith("]"):
        raise MarketpulseError(
            f"id column {id_col!r} has type {id_type}, which cannot key the scores; pass "
            "--id-col with an integer (up to HUGEINT), text, UUID, date or timestamp key column"
        )
    if text_type.upper() not in _TEXT_TYPES:
        what = f"text column {text_col!r}"
        source_sql = spell_table(split_table(table))
        raise not_text_error(
            what,
            text_col,
            text_type,
            "--text-col",
            _FLAGS,
            source_sql,
            con=con,
            relation_sql=table_sql,
        )
    where_sql, params = compile_where(con, where or "", list(cols))
    source = Source(table_sql, id_col, text_col, id_type, where_sql, params, table, where)
    with reading(table):  # a view whose id column fails to compute
        _check_ids(con, source, table)
    return source


def _attached_columns(con, table_sql: str, table: str) -> Columns:
    try:
        return Columns((r[0], r[1]) for r in con.execute(f"DESCRIBE {table_sql}").fetchall())
    except Exception as exc:  # duckdb.CatalogException
        tables = ", ".join(table_names(con, SOURCE_ALIAS)) or "none"
        raise MarketpulseError(
            f"table {table!r} not found in --db (tables: {tables}); "
            "pass --table with an existing table"
        ) from exc


def key_problems(con, table_sql: str, id_col: str) -> tuple[int, int, object]:
    """(NULL ids, duplicated ids, one duplicated id) of `id_col` in `table_sql`: what
    keeps it from keying the table (score and trends refuse either)."""
    ident = quote_ident(id_col)
    # GROUP BY, not count(DISTINCT): DuckDB can spill a grouping to disk (see low_memory)
    return con.execute(
        f"SELECT (SELECT count(*) - count({ident}) FROM {table_sql}), count(*), any_value(id) "
        f"FROM (SELECT {ident} AS id FROM {table_sql} WHERE {ident} IS NOT NULL "
        f"GROUP BY {ident} HAVING count(*) > 1)"
    ).fetchone()


def _check_ids(con, source: Source, table: str) -> None:
    """The id column must be a key of the whole table: no NULLs, no duplicates."""
    nulls, dups, example = key_problems(con, source.table_sql, source.id_col)
    if nulls:
        raise MarketpulseError(
            f"id column {source.id_col!r} of {table!r} has {nulls} NULL value(s); give every "
            "row an id or pass --id-col with a key column"
        )
    if dups:
        raise MarketpulseError(
            f"id column {source.id_col!r} of {table!r} has {dups} duplicate value(s) (e.g. "
            f"{example!r}); deduplicate the table or pass --id-col with a unique column"
        )


def pending_query(
    source: Source, results_table: str, model_version: str, limit: int | None
) -> tuple[str, list]:
    """SQL + parameters for (id, text) of rows still to score, in no particular order."""
    sql = (
        f"SELECT s.{quote_ident(source.id_col)} AS id, s.{quote_ident(source.text_col)} AS text "
        f"FROM {source.table_sql} AS s "
        f"ANTI JOIN (SELECT id FROM {quote_table(results_table)} WHERE model_version = ?) AS r "
        f"ON r.id = s.{quote_ident(source.id_col)} "
        f"WHERE {source.where_sql}"
    )
    params = [model_version, *source.where_params]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return sql, params


def rowid_span(con, source: Source) -> int | None:
    """1 + the largest rowid of a base table; None for a view (no rowid to range over)."""
    try:
        top = con.execute(f"SELECT max(rowid) FROM {source.table_sql}").fetchall()[0][0]
    except Exception:  # duckdb.BinderException: views have no rowid
        return None
    return 0 if top is None else int(top) + 1


def pending_range(
    con, source: Source, results_table: str, model_version: str, lo: int, hi: int, limit: int | None
) -> tuple[str, list] | None:
    """Like `pending_query`, for the rowids [lo, hi) only; None when the range is empty.

    With integer ids the anti-join reads only the scored ids between the range's
    smallest and largest id, so with ids that grow with insertion order DuckDB's zone
    maps skip the rest of the results table, and each query costs the range, not the
    whole table. Other id types join on the whole results table (`_RANGED_ID_TYPES`).
    """
    ident = quote_ident(source.id_col)
    low, high = con.execute(
        f"SELECT min({ident}), max({ident}) FROM {source.table_sql} WHERE rowid >= ? AND rowid < ?",
        [lo, hi],
    ).fetchall()[0]
    if low is None:
        return None
    ranged = source.id_type.upper() in _RANGED_ID_TYPES
    sql = (
        f"SELECT s.{ident} AS id, s.{quote_ident(source.text_col)} AS text "
        f"FROM {source.table_sql} AS s "
        f"ANTI JOIN (SELECT id FROM {quote_table(results_table)} WHERE model_version = ?"
        f"{' AND id BETWEEN ? AND ?' if ranged else ''}) AS r ON r.id = s.{ident} "
        f"WHERE s.rowid >= ? AND s.rowid < ? AND {source.where_sql}"
    )
    params = [model_version, *([low, high] if ranged else []), lo, hi, *source.where_params]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return sql, params


def _has_table(con, name: str) -> bool:
    try:
        con.execute(f"SELECT 1 FROM {quote_table(name)} LIMIT 0").fetchall()
    except Exception:  # duckdb.CatalogException
        return False
    return True


def count_rows(con, source: Source, results_table: str, model_version: str) -> tuple[int, int]:
    """(rows passing the filter, of which already scored by this model version)."""
    if not _has_table(con, results_table):  # no results table yet, nothing scored
        matching = con.execute(
            f"SELECT count(*) FROM {source.table_sql} AS s WHERE {source.where_sql}",
            source.where_params,
        ).fetchall()[0][0]
        return int(matching), 0
    matching, done = con.execute(
        f"SELECT count(*), count(r.id) FROM {source.table_sql} AS s "
        f"LEFT JOIN (SELECT id FROM {quote_table(results_table)} WHERE model_version = ?) AS r "
        f"ON r.id = s.{quote_ident(source.id_col)} WHERE {source.where_sql}",
        [model_version, *source.where_params],
    ).fetchall()[0]
    return int(matching), int(done)


SAMPLE_SALT = "marketpulse auto check:"


def sample_pending_texts(
    con, source: Source, results_table: str, model_version: str, rows: int
) -> list[str]:
    """Up to `rows` non-blank texts of the rows still to score, the same ones on a rerun
    over the same data: a hash sample (ordered by md5 of a salted text). The salt makes it
    independent of export's check texts, ordered by md5 of the text alone: a bundle gated
    on this very table would otherwise be checked again on rows it already passed on.
    One top-N pass over the pending rows; nothing is held but the N."""
    if _has_table(con, results_table):
        sql, params = pending_query(source, results_table, model_version, None)
    else:
        sql = f"SELECT s.{quote_ident(source.text_col)} AS text FROM {source.table_sql} AS s "
        sql += f"WHERE {source.where_sql}"
        params = list(source.where_params)
    with reading(source.table, source.where):
        texts = con.execute(
            f"SELECT t FROM (SELECT CAST(text AS VARCHAR) AS t FROM ({sql})) "
            f"WHERE NOT {blank_sql('t')} ORDER BY md5(? || t), t LIMIT ?",
            [*params, SAMPLE_SALT, int(rows)],
        ).fetchall()
    return [row[0] for row in texts]


def record_batches(relation, rows: int):
    """A streaming Arrow reader over a DuckDB relation (the method's name varies by version)."""
    if hasattr(relation, "to_arrow_reader"):  # duckdb >= 2
        return relation.to_arrow_reader(rows)
    return relation.fetch_arrow_reader(rows)


def arrow_table(relation):
    """A DuckDB relation's rows as one Arrow table (the method's name varies by version)."""
    if hasattr(relation, "to_arrow_table"):  # duckdb >= 2
        return relation.to_arrow_table()
    return relation.fetch_arrow_table()


def export_pending(
    con, sql: str, params: list, out_dir: Path, shard_rows: int, source: Source
) -> list[str]:
    """Stream the pending-rows query into Parquet shards of at most `shard_rows` rows.

    `source` (the query's table) names the table in the one-line error a failing read
    becomes."""
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    writer = None
    rows_in_shard = 0
    try:
        with reading(source.table, source.where):
            relation = con.sql(sql, params=params)
        for batch in read_batches(relation, min(shard_rows, 65536), source):
            if writer is None or rows_in_shard >= shard_rows:
                if writer is not None:
                    writer.close()
                paths.append(str(out_dir / f"pending-{len(paths):05d}.parquet"))
                writer = pq.ParquetWriter(paths[-1], batch.schema)
                rows_in_shard = 0
            writer.write_batch(batch)
            rows_in_shard += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return paths
