"""Where trends reads the results tables: in --db, or in the file `score --results-db` wrote.

`locate` returns the names of the scores and models tables as `quote_table` takes them:
as given when they are in --db; catalog-qualified when they are in another file, which is
attached read-only to the run's connection (the trend tables are still written to --db).
That attachment lives with the connection only, so the stage makes the latest-scores
view temporary then: a view in --db naming another file's table would fail in every
other client of --db.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from marketpulse.errors import MarketpulseError, first_line
from marketpulse.results_schema import MODELS, RUNS
from marketpulse.runtime import results
from marketpulse.sql import (
    is_lock_conflict,
    quote_ident,
    quote_table,
    spell_table,
    split_table,
    table_names,
)


@dataclass(frozen=True)
class ResultsTables:
    scores: str
    models: str
    file: Path  # the file they are in, for messages
    apart: bool  # in another file than --db (attached)


def locate(
    con, *, db: Path, results_db: Path | None, scores_table: str, lock_timeout: float
) -> ResultsTables:
    """The results tables of this run; attaches `results_db` when it is another file."""
    if results_db is None or Path(results_db).resolve() == Path(db).resolve():
        return ResultsTables(scores_table, MODELS, Path(db), False)
    parts = split_table(scores_table)
    if len(parts) == 3:
        raise MarketpulseError(
            f"--scores-table {scores_table!r} names a database, but with --results-db it "
            f"is a table of that file; pass --scores-table {spell_table(parts[1:])}"
        )
    alias = _attach_read_only(con, Path(results_db), lock_timeout)
    scores = spell_table([alias, *(["main"] if len(parts) == 1 else []), *parts])
    return ResultsTables(scores, spell_table([alias, "main", MODELS]), Path(results_db), True)


def missing_table(
    con, res: ResultsTables, *, db: Path, source: str, name: str, hint: str | None
) -> str:
    """The message for a results table `name` that is not there: where it was looked for,
    and where else it may be (`hint`: the flag that names it)."""
    fix = f"pass {hint} with the table `marketpulse score` wrote, or " if hint else "pass "
    if res.apart:
        listed = ", ".join(table_names(con, split_table(res.models)[0])) or "none"
        return (
            f"table {name!r} not found in {res.file} (--results-db; tables: {listed}); "
            f"{fix}--results-db with the file `marketpulse score --results-db` wrote"
        )
    return (
        f"table {name!r} not found in {db}; {fix}--results-db FILE when "
        f"`marketpulse score --results-db FILE` wrote the scores to another file (trends "
        "writes its tables to --db all the same), or score the source first with "
        f"`marketpulse score --db {db} --table {source} ...`"
    )


def scored_elsewhere(con, res: ResultsTables, *, db: Path, source: str, scores_table: str):
    """The tables the `runs` rows say `scores_table` holds the scores of (with their file
    when the name is the source's), when --source is a table and none of them is it;
    else [].

    Scores are matched to source rows by id alone, so another table's scores would build
    a trend of wrong labels without any error. A view as --source is not judged: a view
    over the scored table (adding a brand column, say) is a normal way to read them.
    """
    if results.table_kind(con, source) != "BASE TABLE":
        return []
    runs = spell_table([*split_table(res.models)[:-1], RUNS]) if res.apart else RUNS
    try:
        rows = con.execute(
            f"SELECT DISTINCT results_table, source, source_db, results_db "
            f"FROM {quote_table(runs)} WHERE rows_scored > 0 AND source IS NOT NULL AND results_table IS NOT NULL"
        ).fetchall()
    except duckdb.Error:  # no runs table, or one from before runs named their files
        return []
    key = results.table_key(scores_table)
    rows = [r[1:] for r in rows if results.table_key(r[0]) == key]
    source_db = str(Path(db).resolve())
    results_db = str(Path(res.file).resolve())
    if any(results.scored_this_source(r, source, source_db, results_db) for r in rows):
        return []
    return sorted(
        {
            f"{r[0]} of {r[1]}" if results.table_key(r[0]) == results.table_key(source) else r[0]
            for r in rows
        }
    )


def _attach_read_only(con, path: Path, timeout: float) -> str:
    """ATTACH `path` read-only under a name no attached database has; return the name.

    A scoring run holds its results file only while it commits, so a lock is waited out
    (with backoff, up to `timeout` seconds), as `marketpulse.sql.connect` does for --db.
    """
    rows = con.execute("SELECT database_name FROM duckdb_databases()").fetchall()
    taken = {r[0].lower() for r in rows}
    alias = next(a for a in (f"results_{i}" for i in range(len(taken) + 1)) if a not in taken)
    start, delay, told = time.monotonic(), 0.02, None
    while True:
        try:
            con.execute(f"ATTACH ? AS {quote_ident(alias)} (READ_ONLY)", [str(path)])
            return alias
        except duckdb.Error as exc:
            waited = time.monotonic() - start
            if not is_lock_conflict(exc):
                raise MarketpulseError(
                    f"cannot open {path} as a DuckDB database ({first_line(exc)[:200]}); pass "
                    "--results-db with the file `marketpulse score --results-db` wrote"
                ) from exc
            if waited >= timeout:
                raise MarketpulseError(
                    f"{path} stayed locked by a writer for {waited:.0f}s "
                    f"({first_line(exc)[:160]}); wait for the scoring run to finish"
                ) from exc
            if told is None or waited - told >= 30:
                told = waited
                print(
                    f"trends: waiting for {path} ({first_line(exc)}), {waited:.0f}s so far",
                    file=sys.stderr,
                )
            time.sleep(min(delay, max(timeout - waited, 0.001)))
            delay = min(delay * 1.5, 0.5)
