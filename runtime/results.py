"""Writing the results tables (schema: `marketpulse.results_schema`) in DuckDB.

(id, model_version) is unique by construction, not by a PRIMARY KEY: the source ids
are checked unique, only rows without a score for this version are read (anti-join),
and one run writes at a time (database.py's run lock). DuckDB keeps a key's index in
memory, ~50 bytes a row, which would make a 10-million-row job's memory grow with the
table.

A commit's chunks of scores and the run's counters are written in one
transaction (`write_chunk`), so after a crash the table holds whole chunks only and
the run row agrees with it. A run row still 'running' when a new run holds the same
database's run lock (database.py) belonged to a dead process and is marked 'interrupted'.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from marketpulse.bundle import Bundle
from marketpulse.errors import MarketpulseError
from marketpulse.results_schema import (
    ADDED_RUN_COLUMNS,
    ADDED_SCORE_COLUMNS,
    MODEL_COLUMNS,
    MODELS,
    RESERVED_TABLES,
    RUN_COLUMNS,
    RUNS,
    SCORE_COLUMNS,
    probability_columns,
    sanitize,
)
from marketpulse.sql import ascii_fold, quote_ident, quote_table, split_table


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _columns(con, table_sql: str) -> dict[str, str] | None:
    try:
        return {r[0]: r[1] for r in con.execute(f"DESCRIBE {table_sql}").fetchall()}
    except Exception:  # duckdb.CatalogException: table absent
        return None


def table_kind(con, name: str) -> str | None:
    """'BASE TABLE', 'VIEW' (or another kind) for an existing object `name`, else None.
    Names match as DuckDB's binder matches them: A-Z in any case, other letters as they
    are (`ascii_fold`)."""
    parts = split_table(name)
    catalog, schema = ([None] * (3 - len(parts)) + parts)[:2]
    here = con.execute("SELECT current_database(), current_schema()").fetchone()
    want = tuple(ascii_fold(p) for p in (catalog or here[0], schema or here[1], parts[-1]))
    rows = con.execute(
        "SELECT table_catalog, table_schema, table_name, table_type FROM information_schema.tables"
    ).fetchall()
    return next((r[3] for r in rows if tuple(map(ascii_fold, r[:3])) == want), None)


def check_results_table_name(results_table: str) -> None:
    """Refuse a results table named like one of marketpulse's own tables (runs, models,
    explanations), as DuckDB resolves names: case-insensitive, `main.` implied. A scores
    table there would take that table's place for every later run."""
    quote_table(results_table)  # refuses names that would need quoting
    if table_key(results_table) in RESERVED_TABLES:
        raise MarketpulseError(
            f"--results-table {results_table!r} is the name of marketpulse's own "
            f"{table_key(results_table)} table; pass --results-table with another name "
            "(e.g. scores)"
        )


def check_tables(con, results_table: str, id_type: str) -> dict[str, str] | None:
    """Refuse, before any query touches them, results tables that cannot take these results.

    Returns the existing scores table's {column: type}, or None when it is still to create.
    Runs on a read-only connection: it only looks.
    """
    check_results_table_name(results_table)
    table = quote_table(results_table)
    for name, flag in (
        (results_table, "--results-table"),
        (RUNS, "--results-db"),
        (MODELS, "--results-db"),
    ):
        kind = table_kind(con, name)
        if kind not in (None, "BASE TABLE"):
            raise MarketpulseError(
                f"{name!r} in the results database is a {kind.lower()}, not a table marketpulse "
                f"can write results to; pass {flag} with another "
                + ("name" if flag == "--results-table" else "database file")
            )
    have = _columns(con, table)
    if have is not None:
        missing = [c for c in SCORE_COLUMNS if c not in have]
        if missing:
            raise MarketpulseError(
                f"table {results_table!r} exists but is not a scores table (lacks "
                f"{', '.join(missing)}); pass --results-table with a new or scores table name"
            )
        if have["id"] != id_type:
            raise MarketpulseError(
                f"results table {results_table!r} holds ids of type {have['id']}, the source "
                f"id column is {id_type}; pass --results-table with another name"
            )
    first_runs = {k: v for k, v in RUN_COLUMNS.items() if k not in ADDED_RUN_COLUMNS}
    for name, expected in ((RUNS, first_runs), (MODELS, {"model_version": ""})):
        cols = _columns(con, quote_ident(name))
        if cols is not None and not set(expected) <= set(cols):
            raise MarketpulseError(
                f"table {name!r} in the results database is not marketpulse's {name} table; "
                "pass --results-db with another database file"
            )
    return have


def table_key(name: str, catalog: str | None = None) -> str:
    """How DuckDB resolves a table name here: case-insensitive, `main.` implied, and the
    file's own catalog name (`catalog`, the database file's stem) implied too, so that
    `market.posts` and `market.main.posts` in market.duckdb are `posts`. (A schema named
    like the file would make DuckDB refuse such a name as ambiguous before this runs.)"""
    try:
        parts = [p.lower() for p in split_table(name)]
    except MarketpulseError:  # a name recorded by hand: compare it as written
        parts = [name.lower()]
    if catalog is not None and len(parts) > 1 and parts[0] == catalog.lower():
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == "main":
        parts = parts[1:]
    return ".".join(parts)


def _catalog(source_db: str | None, results_db: str | None) -> str | None:
    """The catalog a run's table name was read against when it is the source file's own:
    the run scored a table of the results file itself (the file opened as the main
    database, named by DuckDB after the file name up to its first dot). None when the
    source was attached beside a --results-db (there `market.posts` is schema market's
    table), or when the files are not known."""
    if source_db is None or source_db != results_db:
        return None
    return Path(source_db).name.split(".")[0]


# A run's source file when it was the results file itself (wherever that file is now).
_SELF = "<the results file>"


def _source_files(con, results_table: str, results_db: str | None, apart: bool) -> set[tuple]:
    """(table key, file, table as spelled) of the runs that wrote into `results_table`.

    The file is _SELF when the run scored a table of the results file itself, its
    resolved path when the table lived in another file, None when unknown: a row without
    `source_db`, or one from before `runs.results_db` whose source file is not the
    results file's current path while this run's source is the results file (that row's
    source may be this very file before it moved). `apart`: this run's source is
    another file than the results.
    """
    cols = _columns(con, quote_ident(RUNS)) or {}
    if "source_db" not in cols:
        return set()
    results_col = "results_db" if "results_db" in cols else "NULL"
    rows = con.execute(
        f"SELECT DISTINCT source, source_db, {results_col} FROM {quote_ident(RUNS)} "
        "WHERE lower(results_table) = lower(?) AND rows_scored + rows_skipped > 0 "
        "AND source IS NOT NULL",
        [results_table],
    ).fetchall()
    return {
        (
            table_key(source, _catalog(source_db, then_results_db)),
            _file_of(source_db, then_results_db, results_db, apart),
            source,
        )
        for source, source_db, then_results_db in rows
    }


def _file_of(
    source_db: str | None, then_results_db: str | None, results_db: str | None, apart: bool
) -> str | None:
    """A runs row's source file: _SELF, a path, or None (unknown); see `_source_files`."""
    if source_db is None:
        return None
    if then_results_db is not None:
        return _SELF if source_db == then_results_db else source_db
    if source_db == results_db:
        return _SELF
    return source_db if apart else None


def scored_this_source(run_row: tuple, table: str, source_db: str, results_db: str) -> bool:
    """Whether a runs row's (source, source_db, results_db) may be a run over `table` of
    the file `source_db`, its results in `results_db` (resolved paths): the same table
    name as DuckDB resolves it, and the same file or one not recorded."""
    source, then_source_db, then_results_db = run_row
    if source is None:
        return False
    mine = table_key(table, _catalog(source_db, results_db))
    if table_key(source, _catalog(then_source_db, then_results_db)) != mine:
        return False
    apart = source_db != results_db
    where = _file_of(then_source_db, then_results_db, results_db, apart)
    return where is None or where == (source_db if apart else _SELF)


def check_one_source(
    con,
    results_table: str,
    table: str,
    source_db: str | None = None,
    results_db: str | None = None,
) -> None:
    """Refuse to add `table`'s scores to a results table that holds another table's.

    Scores are matched to source rows by id alone, so another table's row 7 would pass
    for this table's row 7 already scored, and its label would be reported as this one's.
    Another table is one with another name, or the same name in another database file:
    `source_db` and `results_db` are the resolved paths of this run's source and results
    files (None: compare names only).
    """
    if _columns(con, quote_ident(RUNS)) is None:
        return
    apart = source_db is not None and source_db != results_db
    mine = None if source_db is None else source_db if apart else _SELF
    others = []
    for key, where, spelled in sorted(
        _source_files(con, results_table, results_db, apart), key=str
    ):
        if key != table_key(table, _catalog(source_db, results_db)):
            others.append((spelled, None))
        elif mine is not None and where is not None and where != mine:
            others.append((spelled, where))
    if not others:
        return
    key = table_key(table, _catalog(source_db, results_db))
    suggestion = f"{sanitize(key.replace('.', '_'))}_scores"
    named = [o for o in others if o[1] is None]
    if named:
        raise MarketpulseError(
            f"results table {results_table!r} already holds the scores of table "
            f"{named[0][0]!r}, and scores are matched to rows by id alone; pass "
            f"--results-table with another name for {table!r} (e.g. {suggestion})"
        )
    spelled, where = others[0]

    def file(path):
        return f"the results file {results_db}" if path == _SELF else path

    stem = sanitize(Path(source_db).stem)
    raise MarketpulseError(
        f"results table {results_table!r} already holds the scores of table {spelled!r} "
        f"of {file(where)}, and scores are matched to rows by id alone; pass "
        f"--results-table with another name for {table!r} of {file(mine)} (e.g. "
        f"{stem}_{suggestion}), or --results-db with another file"
    )


def prepare(con, results_table: str, id_type: str, labels: list[str]) -> list[str]:
    """Create or check the scores, models and runs tables; return the probability columns.

    Raises before anything is written when an existing table cannot take these results.
    """
    table = quote_table(results_table)
    p_cols = probability_columns(labels)
    have = check_tables(con, results_table, id_type)
    if have is None:
        probs = "".join(f", {quote_ident(c)} DOUBLE" for c in p_cols)
        added = "".join(f", {quote_ident(c)} {t}" for c, t in ADDED_SCORE_COLUMNS.items())
        con.execute(
            f"CREATE TABLE {table} (id {id_type} NOT NULL, model_version VARCHAR NOT NULL, "
            f"label VARCHAR, confidence DOUBLE{probs}, reason VARCHAR, truncated BOOLEAN, "
            f"scored_at TIMESTAMP{added})"
        )
    else:
        # A model with new labels adds its probability columns, and a table from an older
        # release the columns added since; older rows read NULL there.
        new = {c: "DOUBLE" for c in p_cols} | ADDED_SCORE_COLUMNS
        for col, sql_type in new.items():
            if col not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(col)} {sql_type}")
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {quote_ident(MODELS)} "
        f"({', '.join(f'{quote_ident(k)} {v}' for k, v in MODEL_COLUMNS.items())})"
    )
    cols = ", ".join(f"{quote_ident(k)} {v}" for k, v in RUN_COLUMNS.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {quote_ident(RUNS)} ({cols})")
    have_runs = _columns(con, quote_ident(RUNS))
    for col in ADDED_RUN_COLUMNS:
        if col not in have_runs:
            con.execute(
                f"ALTER TABLE {quote_ident(RUNS)} ADD COLUMN {quote_ident(col)} {RUN_COLUMNS[col]}"
            )
    return p_cols


def register_model(con, bundle: Bundle) -> None:
    con.execute(
        f"INSERT INTO {quote_ident(MODELS)} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [bundle.version, bundle.labels, json.dumps(bundle.manifest, sort_keys=True), utcnow()],
    )


def close_dead_runs(con) -> int:
    """Mark runs left 'running' by a killed process as 'interrupted'; return how many."""
    rows = con.execute(
        f"UPDATE {quote_ident(RUNS)} SET status = 'interrupted' WHERE status = 'running' "
        "RETURNING run_id"
    ).fetchall()
    return len(rows)


def start_run(con, run: dict) -> None:
    cols = list(run)
    con.execute(
        f"INSERT INTO {quote_ident(RUNS)} ({', '.join(quote_ident(c) for c in cols)}) "
        f"VALUES ({', '.join('?' for _ in cols)})",
        [run[c] for c in cols],
    )


def write_chunk(con, results_table: str, chunk, run_id: str, counts: dict[str, int]) -> None:
    """Insert scores rows (a pyarrow Table) and bump the run counters atomically.

    Each row gets `run_id`: its join to `runs` says which graph (variant) scored it.
    """
    run_ids = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(chunk.num_rows, dtype=np.int32)), pa.array([run_id])
    )
    chunk = chunk.append_column("run_id", run_ids)
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_marketpulse_chunk", chunk)
        con.execute(
            f"INSERT INTO {quote_table(results_table)} BY NAME SELECT * FROM _marketpulse_chunk"
        )
        con.execute(
            f"UPDATE {quote_ident(RUNS)} SET rows_scored = rows_scored + ?, "
            "rows_skipped = rows_skipped + ?, rows_failed = rows_failed + ?, "
            "rows_truncated = rows_truncated + ?, rows_duplicate = rows_duplicate + ?, "
            "rows_rescored = rows_rescored + ? WHERE run_id = ?",
            [
                counts["scored"],
                counts["skipped"],
                counts["failed"],
                counts["truncated"],
                counts.get("duplicates", 0),  # only a scoring engine counts copies
                counts.get("rescored", 0),  # and rescored rows
                run_id,
            ],
        )
        con.execute("COMMIT")
    except BaseException:
        # a COMMIT that failed (disk full) has already ended the transaction: a failing
        # ROLLBACK must not replace the error that says why
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_marketpulse_chunk")


def finish_run(con, run_id: str, status: str, rows_per_s: float, error: str | None = None):
    con.execute(
        f"UPDATE {quote_ident(RUNS)} SET status = ?, finished_at = ?, rows_per_s = ?, error = ? "
        "WHERE run_id = ?",
        [status, utcnow(), rows_per_s, error, run_id],
    )
