"""Trends: turn per-row scores into per-bucket market signals that SQL clients can query.

`run(TrendsConfig)` reads the results tables the scorer writes (`scores`, `models`: in
db, or in the file `score --results-db` wrote, attached read-only: `inputs.py`),
creates or refreshes the `latest_<scores>` view and the `trend_<source>_<grain>` table
(see `queries.py`) with the tables that depend on it (forecasts, backtest, drivers: named
after it by `queries.dependent_tables`, dropped when the run does not build them), all in
one transaction, each commented with its source so that another source deriving the same
names is refused rather than written over (`_check_owners`), and returns a `TrendsResult` with the latest bucket per group, the
flagged shifts and what the trend leaves out (source rows without a score, scored rows
without a time). The index labels are picked in `labels.py`. It needs duckdb and
pyarrow only; matplotlib is imported by `plot.py` when a picture is asked for.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from marketpulse.errors import MarketpulseError, first_line
from marketpulse.results_schema import MODELS, RUNS, SCORES, sanitize
from marketpulse.runtime.database import owned_folder, remove_dead_folders
from marketpulse.runtime.source import key_problems
from marketpulse.sql import (
    ascii_fold,
    connect,
    quote_ident,
    quote_table,
    require_columns,
    split_table,
    table_columns,
)
from marketpulse.trends import inputs, queries
from marketpulse.trends.labels import (
    check_label_columns,
    check_one_scheme,
    left_out_note,
    pick_labels,
    union_labels,
)

TIME_TYPES = ("DATE", "TIMESTAMP", "VARCHAR")  # VARCHAR: ISO-8601 text, cast at its UTC instant
TIME_KINDS = "DATE, TIMESTAMP, TIMESTAMPTZ or ISO-8601 text"  # what --time-col takes, for messages
# The scratch database trends computes its tables in (attached under this name), in a
# temp folder that holds a flocked owner.lock, so a killed run's is swept by the next.
WORK = "marketpulse_trends_work"
SCRATCH_PREFIX = "marketpulse-trends-"
SCRATCH_MAKING_PREFIX = ".marketpulse-trends-making-"
# scores.id joins a source id of the same family; across families DuckDB casts every value
# (text to a number) and fails on the first that does not convert
INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                 "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")  # fmt: skip


@dataclass(frozen=True)
class TrendsConfig:
    db: Path
    source: str
    id_col: str
    time_col: str
    by: tuple[str, ...] = ()
    grain: str = "week"
    window: int = 8  # trailing buckets: 8 detects 0.3-0.4 shocks 2x as often as 4 (shift_eval)
    positive: str | None = None
    negative: str | None = None
    scores_table: str = SCORES
    # the file `score --results-db` wrote scores/models to (attached read-only); None: db.
    # The trend tables always go to db.
    results_db: Path | None = None
    alpha: float = 0.01  # two-sided false-alarm probability per bucket check (is_shift)
    # default trend_<source>_<grain>; <source>: schema_table outside main (queries.table_name)
    trend_table: str | None = None
    horizon: int = 4  # buckets ahead in forecast_<source>_<grain>; 0: no forecast tables
    text_col: str | None = None  # set: write trend_drivers_<source>_<grain> (why a shift happened)
    # (with trend_table T, the forecast and drivers tables are named after T instead:
    # queries.dependent_tables)
    top_words: int = 10  # drivers per flagged bucket
    lock_timeout: float = 600.0  # seconds to wait while a scoring run commits
    csv: Path | None = None
    parquet: Path | None = None
    plot: Path | None = None


@dataclass(frozen=True)
class TrendsResult:
    db: Path
    trend_table: str
    latest_view: str
    by: tuple[str, ...]
    grain: str
    labels: list[str]
    positive: str  # the side's labels, comma-separated as --positive takes them
    negative: str
    alpha: float
    n_rows: int
    n_buckets: int
    latest: list[dict[str, Any]] = field(repr=False)
    flagged: list[dict[str, Any]] = field(repr=False)
    outputs: dict[str, Path] = field(default_factory=dict)
    forecast_table: str = ""
    backtest_table: str = ""
    skill: dict[str, Any] = field(default_factory=dict)
    drivers_table: str = ""
    drivers: list[dict[str, Any]] = field(default_factory=list, repr=False)
    null_time_rows: int = 0  # scored rows left out because their time column is NULL
    skipped_rows: int = 0  # rows the scorer skipped (no label: empty text, ...): left out
    sparse_note: str = ""  # set when stray times stretch the grid (`_stray_note`)
    models_note: str = ""  # set when the latest scores come from several model versions
    labels_note: str = ""  # set when a default side leaves out graded labels (`left_out_note`)
    time_col: str = ""
    source_rows: int = 0  # rows of the source
    unscored_rows: int = 0  # of those, rows no model scored: left out of the trend
    results_db: Path | None = None  # where the scores were read, when not db


def run(cfg: TrendsConfig) -> TrendsResult:
    """Build the latest-scores view and the trend table, then export and plot if asked."""
    _check_config(cfg)
    if not Path(cfg.db).is_file():
        raise MarketpulseError(f"database {cfg.db} not found; pass --db with an existing file")
    if cfg.results_db is not None and not Path(cfg.results_db).is_file():
        raise MarketpulseError(
            f"results database {cfg.results_db} not found; pass --results-db with the file "
            "`marketpulse score --results-db` wrote the scores to (leave it out when they are "
            "in --db)"
        )
    # Computed on a read-only connection (readers keep reading meanwhile), into a scratch
    # file; then the tables are copied into --db in one short transaction (`_publish`).
    temp = Path(tempfile.gettempdir())
    remove_dead_folders(temp, SCRATCH_PREFIX)  # a killed run's tables, drivers' words too
    with owned_folder(temp, SCRATCH_PREFIX, SCRATCH_MAKING_PREFIX) as scratch:
        work = Path(scratch) / "work.duckdb"
        con = _open_db(cfg)
        try:
            # buckets are cut at UTC (queries.bucket_sql), whatever the machine's time zone
            con.execute("SET TimeZone = 'UTC'")
            res = inputs.locate(
                con,
                db=Path(cfg.db),
                results_db=cfg.results_db,
                scores_table=cfg.scores_table,
                lock_timeout=cfg.lock_timeout,
            )
            # what the source's name resolves against (`market.posts` in market.duckdb)
            database = queries.Database.of(con)
            table = cfg.trend_table or queries.trend_table_name(cfg.source, cfg.grain, database)
            dependents = queries.dependent_tables(table)
            view = queries.latest_view_name(cfg.scores_table, database)
            _check_source(con, cfg, res, [table, *dependents.values()], view)
            if cfg.trend_table is None:  # a name of the user's choosing is theirs to reuse
                _check_owners(con, cfg, [table, *dependents.values()], database)
            _write_to(con, work)
            con.execute(queries.latest_scores_sql(view, res.scores, res.models, temporary=True))
            models, null_times, source_rows, unscored, skipped = _models(con, cfg, res, view)
            labels = union_labels(models)
            positive, negative = pick_labels(models, cfg.positive, cfg.negative)
            check_one_scheme(cfg.source, models, positive, negative)
            left_out = left_out_note(models, positive, negative, cfg.positive, cfg.negative)
            if left_out:
                print(f"trends: note: {left_out}", file=sys.stderr)
            check_label_columns(cfg.source, models)
            _check_collisions(cfg.by, labels, forecasts=cfg.horizon > 0)
            if unscored:
                note = _unscored_note(cfg, source_rows, unscored)
                print(f"trends: warning: {note}", file=sys.stderr)
            _write_trend_table(con, cfg, table, view, labels, positive, negative)
            mixed = _models_note(con, cfg, view) if len(models) > 1 else ""
            sparse = _stray_note(con, cfg, table, view)
            if sparse:  # before the forecasts, which take long on such a grid
                print(f"trends: warning: {sparse}", file=sys.stderr)
            f_table, b_table, skill = _forecasts(con, cfg, table, dependents)
            result = _collect(con, cfg, table, view, labels, positive, negative)
            result = replace(
                result,
                forecast_table=f_table,
                backtest_table=b_table,
                skill=skill,
                null_time_rows=null_times,
                skipped_rows=skipped,
                sparse_note=sparse,
                models_note=mixed,
                labels_note=left_out,
                time_col=cfg.time_col,
                source_rows=source_rows,
                unscored_rows=unscored,
                results_db=Path(cfg.results_db) if res.apart else None,
                latest_view="" if res.apart else view,
            )
            if cfg.text_col:
                sides = (positive, negative)
                result = _drivers(con, cfg, result, table, view, dependents["trend_drivers"], sides)
        finally:
            con.close()
        latest = None if res.apart else queries.latest_scores_sql(view, res.scores, res.models)
        note = queries.source_note(cfg.source, database)
        outputs = _publish(cfg, work, [table, *dependents.values()], latest, note)
    if cfg.plot:
        from marketpulse.trends.plot import plot_trends

        with _after_commit(cfg, table, "--plot"):
            rows = _all_rows(cfg.db, table, cfg.lock_timeout)
            fans = (
                _all_rows(cfg.db, result.forecast_table, cfg.lock_timeout)
                if result.forecast_table
                else []
            )
            outputs["plot"] = plot_trends(result, cfg.plot, rows, fans)
    return replace(result, outputs=outputs)


def _open_db(cfg: TrendsConfig):
    """--db, read-only; a file that is not a DuckDB database is one line naming the flag."""
    try:
        return connect(cfg.db, read_only=True, timeout=cfg.lock_timeout, on_wait=_waiting(cfg))
    except duckdb.Error as exc:  # a lock held too long is a MarketpulseError of its own
        raise MarketpulseError(
            f"cannot open {cfg.db} as a DuckDB database ({first_line(exc)[:200]}); pass --db "
            "with the DuckDB file that holds the source"
        ) from exc


def _waiting(cfg: TrendsConfig):
    def say(waited: float, why: str) -> None:
        print(f"trends: waiting for {cfg.db} ({why}), {waited:.0f}s so far", file=sys.stderr)

    return say


def _write_to(con, work: Path) -> None:
    """Make the scratch file `work` where this connection's CREATE TABLEs land, while
    every name still reads from --db: the scratch file first on the search path, then
    each schema of --db (a source `sales.posts` resolves as before)."""
    db = con.execute("SELECT current_database()").fetchone()[0]
    schemas = [
        r[0]
        for r in con.execute(
            "SELECT schema_name FROM duckdb_schemas() WHERE database_name = ? "
            "ORDER BY schema_name = 'main' DESC, schema_name",
            [db],
        ).fetchall()
    ]
    con.execute(f"ATTACH ? AS {quote_ident(WORK)} (READ_WRITE)", [str(work)])
    con.execute(f"USE {quote_ident(WORK)}")
    path = ",".join(
        [f"{quote_ident(WORK)}.main", *(f"{quote_ident(db)}.{quote_ident(s)}" for s in schemas)]
    )
    con.execute(f"SET search_path = '{path.replace(chr(39), chr(39) * 2)}'")


def _publish(cfg: TrendsConfig, work: Path, names: list[str], latest: str | None, note: str):
    """Copy the tables of `names` made in `work` into --db, each commented with `note` (its
    source: `_check_owners`), and drop those it did not make (an earlier run's forecasts
    after --horizon 0, say), with the latest-scores view, in one transaction: a reader sees
    the old set or the new one, never a mix. Then the --csv/--parquet files. --db is held
    read-write for the copy only."""
    con = connect(cfg.db, read_only=False, timeout=cfg.lock_timeout, on_wait=_waiting(cfg))
    try:
        con.execute(f"ATTACH ? AS {quote_ident(WORK)} (READ_ONLY)", [str(work)])
        made = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [WORK]
            ).fetchall()
        }
        con.execute("BEGIN TRANSACTION")
        if latest is not None:
            con.execute(latest)
        for name in names:
            target = f"main.{quote_ident(name)}"
            if name in made:
                source = f"{quote_ident(WORK)}.main.{quote_ident(name)}"
                con.execute(f"CREATE OR REPLACE TABLE {target} AS FROM {source}")
                con.execute(f"COMMENT ON TABLE {target} IS '{note.replace(chr(39), chr(39) * 2)}'")
            else:
                con.execute(f"DROP TABLE IF EXISTS {target}")
        con.execute("COMMIT")
        con.execute(f"DETACH {quote_ident(WORK)}")
        with _after_commit(cfg, names[0], "--csv/--parquet"):
            return _export(con, names[0], cfg)
    finally:
        con.close()  # without COMMIT (an error), DuckDB rolls the whole copy back


@contextmanager
def _after_commit(cfg: TrendsConfig, table: str, flag: str):
    """A file write after the tables were committed: one line saying they were."""
    try:
        yield
    except OSError as exc:  # pyarrow's IO errors are OSErrors too
        raise MarketpulseError(
            f"the trend tables were written to {cfg.db} ({table}), but writing the {flag} file "
            f"failed ({first_line(exc)[:200]}); pass another path, or read the table with "
            "`marketpulse sql`"
        ) from exc


def _write_trend_table(con, cfg: TrendsConfig, table, view, labels, positive, negative) -> None:
    sql = queries.trend_table_sql(
        table=table,
        view=view,
        source=cfg.source,
        id_col=cfg.id_col,
        time_col=cfg.time_col,
        by=cfg.by,
        grain=cfg.grain,
        window=cfg.window,
        labels=labels,
        alpha=cfg.alpha,
    )
    try:
        con.execute(sql, [*labels, list(positive), list(negative)])
    except duckdb.ConversionException as exc:
        raise MarketpulseError(
            f"column {cfg.time_col!r} holds values that are not dates or timestamps "
            f"({first_line(exc)}); pass --time-col with a {TIME_KINDS} column, or as "
            f"--source a view that turns the bad values into NULL (e.g. SELECT * REPLACE "
            f"(NULLIF(trim({quote_ident(cfg.time_col)}), '') AS {quote_ident(cfg.time_col)}) "
            f"FROM {cfg.source}): rows without a time are counted and left out"
        ) from exc


def _forecasts(con, cfg: TrendsConfig, table: str, dependents: dict[str, str]):
    """(forecast table, backtest table, skill); without forecasts (--horizon 0) none are
    made, so `_publish` drops an earlier run's: they would forecast from another trend
    table."""
    if not cfg.horizon:
        return "", "", {}
    wanted = (dependents["forecast"], dependents["forecast_backtest"])
    write_forecasts = _forecast_step()
    skill = write_forecasts(
        con,
        table=table,
        forecast_table=wanted[0],
        backtest_table=wanted[1],
        by=cfg.by,
        grain=cfg.grain,
        window=cfg.window,
        horizon=cfg.horizon,
    )
    return wanted[0], wanted[1], skill


def _drivers(con, cfg: TrendsConfig, result: TrendsResult, table: str, view: str, name, sides):
    """Write the drivers table for the flagged buckets; keep its rows for the report."""
    from marketpulse.trends.drivers import write_drivers

    write_drivers(
        con,
        trend_table=table,
        source=cfg.source,
        id_col=cfg.id_col,
        time_col=cfg.time_col,
        text_col=cfg.text_col,
        by=cfg.by,
        grain=cfg.grain,
        window=cfg.window,
        view=view,
        positive=sides[0],
        negative=sides[1],
        top_words=cfg.top_words,
        drivers_table=name,
    )
    order = "".join(f"{quote_ident(c)}, " for c in cfg.by)
    rows = _dicts(con.execute(f"SELECT * FROM {quote_ident(name)} ORDER BY bucket, {order}rank"))
    return replace(result, drivers_table=name, drivers=rows)


def _forecast_step():
    """The forecasting step (`write_forecasts`), imported when used: it needs the `trends`
    extra."""
    try:
        from marketpulse.trends.forecast_tables import write_forecasts
    except ImportError as exc:
        raise MarketpulseError(
            f"trends forecasts need statsforecast and pandas, which are not installed ({exc}); "
            "install them with `pip install 'marketpulse[trends]'`"
        ) from exc
    return write_forecasts


def _check_config(cfg: TrendsConfig) -> None:
    if cfg.grain not in queries.GRAINS:
        raise MarketpulseError(
            f"grain {cfg.grain!r} is not supported; pass --grain {'|'.join(queries.GRAINS)}"
        )
    if not 0 <= cfg.horizon <= 52:
        raise MarketpulseError(
            f"horizon {cfg.horizon} is out of range; pass --horizon 1 to 52 (0: no forecasts)"
        )
    if not queries.MIN_HISTORY <= cfg.window <= queries.MAX_WINDOW:
        raise MarketpulseError(
            f"window {cfg.window} is out of range (a z-score needs {queries.MIN_HISTORY} "
            f"trailing buckets); pass --window {queries.MIN_HISTORY} to {queries.MAX_WINDOW}"
        )
    if not 0 < cfg.alpha < 1:
        raise MarketpulseError(f"alpha {cfg.alpha} must be between 0 and 1; pass e.g. 0.01")
    if cfg.trend_table is not None and not queries.is_plain_name(cfg.trend_table):
        raise MarketpulseError(
            f"invalid --trend-table {cfg.trend_table!r}; use letters, digits and underscores "
            "(a table in the database's main schema)"
        )
    for flag, path in (("--csv", cfg.csv), ("--parquet", cfg.parquet), ("--plot", cfg.plot)):
        if path is None:
            continue
        parent = Path(path).parent
        if Path(path).is_dir():
            raise MarketpulseError(f"{flag} {path} is a folder; pass a file path")
        if parent.exists() and (not parent.is_dir() or not os.access(parent, os.W_OK)):
            raise MarketpulseError(
                f"{flag} {path}: {parent} is not a folder this user can write to; pass another path"
            )
        if not parent.exists():
            raise MarketpulseError(
                f"folder {parent} does not exist; create it or pass another path"
            )


def _check_source(
    con, cfg: TrendsConfig, res: inputs.ResultsTables, outputs: list[str], view: str
) -> None:
    """Every input, checked before anything is written."""
    cols = {"--id-col": cfg.id_col, "--time-col": cfg.time_col}
    have = require_columns(con, cfg.source, cols, table_flag="--source")
    for col in cfg.by:
        require_columns(con, cfg.source, {"--by": col}, table_flag="--source")
    if cfg.text_col:
        _check_text_col(con, cfg)
    time_type = have[cfg.time_col].upper()
    if not time_type.startswith(TIME_TYPES):
        raise MarketpulseError(
            f"column {cfg.time_col!r} is {have[cfg.time_col]}, not a date or timestamp; "
            f"pass --time-col with a {TIME_KINDS} column"
        )
    _check_finite_times(con, cfg)
    for table, name, hint in (
        (res.scores, cfg.scores_table, "--scores-table"),
        (res.models, MODELS, None),
    ):
        try:
            table_columns(con, table)
        except MarketpulseError as exc:
            message = inputs.missing_table(
                con, res, db=Path(cfg.db), source=cfg.source, name=name, hint=hint
            )
            raise MarketpulseError(message) from exc
    s_type = table_columns(con, res.scores).get("id")
    if s_type is None:
        raise MarketpulseError(
            f"table {cfg.scores_table!r} has no id column, so it is not a marketpulse scores "
            "table; pass --scores-table with the table `marketpulse score` wrote"
        )
    _check_id_types(cfg, have[cfg.id_col], s_type)
    _check_ids(con, cfg)
    others = inputs.scored_elsewhere(
        con, res, db=Path(cfg.db), source=cfg.source, scores_table=cfg.scores_table
    )
    if others:
        own = _own_results_table(cfg)
        raise MarketpulseError(
            f"{cfg.scores_table!r} holds the scores of table {others[0]} (its runs say so), "
            f"not of {cfg.source!r} of {cfg.db}, and scores are matched to rows by id alone; "
            f"pass --source with that table (or a view of its rows), or score {cfg.source!r} "
            f"into its own results table (`{_score_command(cfg, own)}`) and pass "
            f"--scores-table {own}"
        )
    _check_outputs(cfg, outputs, view)


def _check_text_col(con, cfg: TrendsConfig) -> None:
    """What the drivers step would refuse, refused before the trend table is written."""
    from marketpulse.trends.drivers import DRIVER_COLUMNS

    have = require_columns(con, cfg.source, {"--text-col": cfg.text_col}, table_flag="--source")
    if not have[cfg.text_col].upper().startswith("VARCHAR"):
        raise MarketpulseError(
            f"column {cfg.text_col!r} is {have[cfg.text_col]}, not text; pass --text-col "
            "with a VARCHAR column"
        )
    for col in cfg.by:
        if col.lower() in DRIVER_COLUMNS:
            raise MarketpulseError(
                f"--by column {col!r} clashes with a drivers column; rename it in a view "
                "and pass that view as --source"
            )


def _check_finite_times(con, cfg: TrendsConfig) -> None:
    """Refuse 'infinity' and '-infinity' times (what a Postgres export writes for "no
    time"): they have no bucket, and the grid between them would be endless."""
    t = quote_ident(cfg.time_col)
    as_time = f"TRY_CAST({t} AS TIMESTAMPTZ)"  # text that is not a time: refused later
    n, example = con.execute(
        f"SELECT count(*), any_value(CAST({t} AS VARCHAR)) FROM {quote_table(cfg.source)} "
        f"WHERE NOT isfinite({as_time})"
    ).fetchone()
    if n:
        raise MarketpulseError(
            f"column {cfg.time_col!r} of {cfg.source!r} holds {n:,} time(s) that are not "
            f"finite (e.g. {example!r}, an export's mark for no time?), which fall in no "
            f"bucket; pass as --source a view that turns them into NULL (e.g. SELECT * "
            f"REPLACE (CASE WHEN isfinite(CAST({t} AS TIMESTAMPTZ)) THEN {t} END AS {t}) "
            f"FROM {cfg.source}): rows without a time are counted and left out"
        )


def _check_ids(con, cfg: TrendsConfig) -> None:
    """The id column must key the source, as `score` requires: a repeated id would count
    its one score once per copy, and a NULL id can never be scored."""
    nulls, dups, example = key_problems(con, quote_table(cfg.source), cfg.id_col)
    if dups:
        raise MarketpulseError(
            f"id column {cfg.id_col!r} of {cfg.source!r} has {dups:,} duplicate value(s) (e.g. "
            f"{example!r}), and each copy would count the id's one score again; deduplicate "
            "the source (or pass as --source a view of distinct rows) or pass --id-col with "
            "a unique column"
        )
    if nulls:
        raise MarketpulseError(
            f"id column {cfg.id_col!r} of {cfg.source!r} has {nulls:,} NULL value(s), and "
            "`marketpulse score` cannot score such rows; give every row an id or pass as "
            "--source a view without them"
        )


def _check_id_types(cfg: TrendsConfig, id_type: str, scores_type: str) -> None:
    def family(t: str) -> str:
        t = t.upper()
        return "integer" if t in INTEGER_TYPES else "text" if t.startswith("VARCHAR") else t

    if family(id_type) != family(scores_type):
        raise MarketpulseError(
            f"column {cfg.id_col!r} of {cfg.source!r} is {id_type} but "
            f"{cfg.scores_table}.id is {scores_type}, so they cannot be matched; pass --id-col "
            "with the column `marketpulse score` read as --id-col"
        )


def _check_owners(con, cfg: TrendsConfig, names: list[str], database: queries.Database) -> None:
    """Refuse to replace the tables of another source that derive the same names
    (`main.s1_posts` and `s1.posts` both give trend_s1_posts_<grain>, `"My Posts"` and
    `my_posts` both trend_my_posts_<grain>): each table trends writes names its source in
    its comment (`queries.source_note`). A table without one (from before the comments)
    is replaced, as it always was."""
    rows = con.execute(
        "SELECT table_name, comment FROM duckdb_tables() "
        "WHERE database_name = ? AND schema_name = 'main'",
        [database.name],
    ).fetchall()
    comments = {ascii_fold(name): (name, comment) for name, comment in rows}
    for name, comment in (comments[ascii_fold(n)] for n in names if ascii_fold(n) in comments):
        if queries.same_source(comment, cfg.source, database) is False:
            other = comment[len(queries.SOURCE_NOTE) :]
            full = "_".join(sanitize(p) for p in queries.source_parts(cfg.source, database))
            alt = f"trend_{full}_{cfg.grain}"
            alt = f"{names[0]}_2" if alt.lower() == names[0].lower() else alt
            raise MarketpulseError(
                f"table {name} of {cfg.db} holds the trends of {other}, whose tables have the "
                f"names that {cfg.source!r} derives; pass --trend-table {alt} (or another name) "
                f"to keep both, or drop the tables of {other} to replace them"
            )


def _check_outputs(cfg: TrendsConfig, outputs: list[str], view: str) -> None:
    """Refuse a trend (or dependent) table name that would replace an input."""
    source = split_table(cfg.source)[-1]
    scores = split_table(cfg.scores_table)[-1]
    input_names = {source, scores, MODELS, RUNS, view}
    taken = {t.lower(): t for t in input_names}
    for name in outputs:
        if name.lower() in taken:
            raise MarketpulseError(
                f"trends would write table {name!r} over its input {taken[name.lower()]!r}; "
                "pass --trend-table with another name"
            )


def _models(con, cfg: TrendsConfig, res: inputs.ResultsTables, view: str):
    """(models, null-time rows, source rows, unscored rows, skipped rows).

    models: [(model version, its labels, rows)] behind the latest scores of this source,
    newest first. Null-time rows: scored rows with a NULL time (left out of the trend).
    Unscored rows: source rows no model scored (no row in the latest view), left out too:
    counted so that a partly scored source never passes for the whole table. Skipped
    rows: scored rows without a label (the scorer skipped their text), left out too.
    """
    t = f"src.{quote_ident(cfg.time_col)}"
    rows = con.execute(
        f"""
        SELECT ls.id IS NULL AS unscored, ls.model_version, any_value(m.labels), count(*),
               count(*) FILTER (WHERE ls.label IS NOT NULL AND {t} IS NULL),
               count(*) FILTER (WHERE ls.label IS NOT NULL AND {t} IS NOT NULL),
               count(*) FILTER (WHERE ls.label IS NULL)
        FROM {quote_table(cfg.source)} AS src
        LEFT JOIN {quote_ident(view)} AS ls ON ls.id = src.{quote_ident(cfg.id_col)}
        LEFT JOIN {quote_table(res.models)} AS m ON m.model_version = ls.model_version
        GROUP BY ALL
        ORDER BY max(m.registered_at) DESC NULLS LAST
        """
    ).fetchall()
    source_rows = sum(r[3] for r in rows)
    unscored = sum(r[3] for r in rows if r[0])
    rows = [r[1:] for r in rows if not r[0]]
    if not rows:
        raise MarketpulseError(
            f"no row of {cfg.source!r} has a score in {cfg.scores_table!r} of {res.file}; "
            f"score it first with `{_score_command(cfg)}` or check --id-col"
        )
    for version, model_labels, *_ in rows:
        if model_labels is None:
            raise MarketpulseError(
                f"model version {version} has scores but no row in the models table; "
                "re-run `marketpulse score` so it registers the model"
            )
    null_times = sum(r[3] for r in rows)
    if not sum(r[4] for r in rows):
        raise MarketpulseError(
            f"no scored row of {cfg.source!r} has a {cfg.time_col!r} ({null_times:,} have it "
            f"NULL, the rest were skipped by the scorer); pass --time-col with a filled column"
        )
    models = [(version, list(labels), int(n)) for version, labels, n, *_ in rows]
    skipped = sum(r[5] for r in rows)
    return models, int(null_times), int(source_rows), int(unscored), int(skipped)


def _own_results_table(cfg: TrendsConfig) -> str:
    """A results table name for --source alone that `score` accepts: plain (no quotes,
    not starting with a digit) and not the scores table it must not share."""
    own = f"{sanitize(split_table(cfg.source)[-1])}_scores"
    own = f"t_{own}" if own[0].isdigit() else own
    return f"{own}_2" if own.lower() == split_table(cfg.scores_table)[-1].lower() else own


def _score_command(cfg: TrendsConfig, results_table: str | None = None) -> str:
    """The `marketpulse score` command that scores this source into the results trends
    read (or into `results_table`)."""
    q = shlex.quote  # pasted into a shell: '"Market Posts"' keeps its quotes
    where = f" --results-db {q(str(cfg.results_db))}" if cfg.results_db is not None else ""
    results_table = results_table or cfg.scores_table
    table = f" --results-table {q(results_table)}" if results_table != SCORES else ""
    return f"marketpulse score --db {q(str(cfg.db))} --table {q(cfg.source)}{where}{table} ..."


def _unscored_note(cfg: TrendsConfig, source_rows: int, unscored: int) -> str:
    """One line for the log: how much of the source the trend leaves out, and the fix."""
    return (
        f"{unscored:,} of {source_rows:,} rows of {cfg.source!r} ({unscored / source_rows:.1%}) "
        f"have no score and are left out of the trend; finish scoring the source with "
        f"`{_score_command(cfg)}` (or pass as --source a view of the rows you mean to score)"
    )


def _check_collisions(by: tuple[str, ...], labels: list[str], forecasts: bool) -> None:
    # DuckDB identifiers ignore case: `--by Volume` would collide with `volume`, and a
    # table made with two `model` columns silently renames one `model_1`
    made = {*queries.TREND_COLUMNS, "label"}  # label: the joined score column
    for lab in labels:
        made |= {"n_" + sanitize(lab), "share_" + sanitize(lab)}
    made = {m.lower() for m in made}
    forecast_made = {c.lower() for c in (*queries.FORECAST_COLUMNS, *queries.BACKTEST_COLUMNS)}
    seen: set[str] = set()
    for col in by:
        if col.lower() in made or col.startswith("_"):
            raise MarketpulseError(
                f"--by column {col!r} clashes with a trend column; rename it in a view "
                "and pass that view as --source"
            )
        if forecasts and col.lower() in forecast_made:
            raise MarketpulseError(
                f"--by column {col!r} clashes with a forecast column; rename it in a view "
                "and pass that view as --source, or pass --horizon 0 (no forecasts)"
            )
        if col.lower() in seen:
            raise MarketpulseError(
                f"--by names column {col!r} twice (names ignore case); pass each column once"
            )
        seen.add(col.lower())


def _stray_note(con, cfg: TrendsConfig, table: str, view: str) -> str:
    """One line when stray times stretch the bucket grid, which runs from the first bucket
    with rows to the last for every group: rows at either end of it cut off from the rest
    by more than --window empty buckets (one post stamped 1970-01-01 made 20,512 daily
    buckets, and the forecasts took minutes; one day/month swap months ahead made every
    group's latest bucket an empty one and wiped every forecast band), or times later
    than now. A warning, not a filter: a source that resumes after a pause looks alike."""
    filled = con.execute(
        f"SELECT * FROM (SELECT row_number() OVER (ORDER BY bucket), bucket, sum(volume) AS n "
        f"FROM {quote_ident(table)} GROUP BY bucket) WHERE n > 0 ORDER BY bucket"
    ).fetchall()
    notes = []
    for side, ends in (("first", filled), ("last", filled[::-1])):
        k = _stray_end(ends, cfg.window)
        if not k:
            continue
        n = sum(r[2] for r in ends[:k])
        low, high = sorted((ends[0][1], ends[k - 1][1]))
        where = f"bucket ({low})" if k == 1 else f"buckets ({low} to {high})"
        gap = abs(ends[k][0] - ends[k - 1][0]) - 1
        said = f"{_rows(n)} in the {side} {cfg.grain} {where} {_verb(n, 'lies', 'lie')} {gap:,}"
        if side == "first":
            notes.append(f"{said} empty buckets before the rest (which starts {ends[k][1]})")
        else:
            start = " and the forecasts start there" if cfg.horizon else ""
            notes.append(
                f"{said} empty buckets after the rest (which ends {ends[k][1]}), so every "
                f"group's latest bucket is {high}{start}"
            )
    notes += _later_than_now(con, cfg, view, filled[-1][1])
    if not notes:
        return ""
    return (
        f"{table}: {'; '.join(notes)}; a stray {cfg.time_col!r} (a default date, a day/month "
        f"swap?): check that column, or pass as --source a view that filters "
        f"{cfg.time_col!r} to the span you mean"
    )


def _later_than_now(con, cfg: TrendsConfig, view: str, last_bucket) -> list[str]:
    """[a note on the scored rows whose time is later than now], or []."""
    (now,) = con.execute(f"SELECT {queries.bucket_sql(cfg.grain, 'now()')}").fetchone()
    if last_bucket < now:  # the source is scanned only when a time can be later than now
        return []
    t = f"CAST(src.{quote_ident(cfg.time_col)} AS TIMESTAMPTZ)"
    n, latest = con.execute(
        f"SELECT count(*), max({t}) FROM {quote_table(cfg.source)} AS src "
        f"JOIN {quote_ident(view)} AS ls ON ls.id = src.{quote_ident(cfg.id_col)} "
        f"WHERE ls.label IS NOT NULL AND {t} > now()"
    ).fetchone()
    if not n:
        return []
    return [
        f"{_rows(n)} {_verb(n, 'has', 'have')} a {cfg.time_col!r} later than now (the latest {latest})"
    ]


def _stray_end(ends: list, window: int) -> int:
    """How many buckets with rows (grid position, bucket, rows), from one end of the grid
    inward, are cut off from the next by more than `window` empty buckets while spanning
    at most `window` buckets themselves (too few for a trailing window); 0: none."""
    for k in range(1, len(ends)):
        if abs(ends[k - 1][0] - ends[0][0]) >= window:
            return 0
        if abs(ends[k][0] - ends[k - 1][0]) - 1 > window:
            return k
    return 0


def _rows(n: int) -> str:
    return f"{n:,} row{'' if n == 1 else 's'}"


def _verb(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def _models_note(con, cfg: TrendsConfig, view: str) -> str:
    """One line naming the model versions behind the latest scores and the span of time
    each scored: where one takes over, a shift may be the model's, not the market's."""
    t = f"src.{quote_ident(cfg.time_col)}"
    rows = con.execute(
        f"SELECT ls.model_version, count(*), min({t}), max({t}) "
        f"FROM {quote_table(cfg.source)} AS src "
        f"JOIN {quote_ident(view)} AS ls ON ls.id = src.{quote_ident(cfg.id_col)} "
        f"WHERE ls.label IS NOT NULL AND {t} IS NOT NULL GROUP BY 1 ORDER BY 3, 1"
    ).fetchall()
    if len(rows) < 2:  # the other versions' rows were all skipped or without a time
        return ""
    spans = "; ".join(
        f"{version[:12]}: {n:,} rows, {str(low)[:10]} to {str(high)[:10]}"
        for version, n, low, high in rows
    )
    return (
        f"the scores come from {len(rows)} model versions ({spans}); a shift where one "
        "takes over may be the model's, not the market's: rescore the source with one "
        "model to compare like with like"
    )


def _collect(con, cfg, table, view, labels, positive, negative) -> TrendsResult:
    t = quote_ident(table)
    groups = [quote_ident(c) for c in cfg.by]
    part = f"PARTITION BY {', '.join(groups)} " if groups else ""
    n_rows, n_buckets = con.execute(f"SELECT count(*), count(DISTINCT bucket) FROM {t}").fetchone()
    latest = _dicts(
        con.execute(
            f"SELECT * FROM {t} QUALIFY row_number() OVER ({part}ORDER BY bucket DESC) = 1 "
            f"ORDER BY {', '.join(groups) or 'bucket'}"
        )
    )
    flagged = _dicts(
        con.execute(
            f"SELECT * FROM {t} WHERE is_shift ORDER BY bucket{''.join(', ' + g for g in groups)}"
        )
    )
    return TrendsResult(
        db=Path(cfg.db),
        trend_table=table,
        latest_view=view,
        by=tuple(cfg.by),
        grain=cfg.grain,
        labels=labels,
        positive=",".join(positive),
        negative=",".join(negative),
        alpha=cfg.alpha,
        n_rows=n_rows,
        n_buckets=n_buckets,
        latest=latest,
        flagged=flagged,
    )


def _dicts(cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _all_rows(db: Path, table: str, lock_timeout: float) -> list[dict[str, Any]]:
    con = connect(db, read_only=True, timeout=lock_timeout)
    try:
        return _dicts(con.execute(f"SELECT * FROM {quote_ident(table)}"))
    finally:
        con.close()


def _export(con, table: str, cfg: TrendsConfig) -> dict[str, Path]:
    outputs: dict[str, Path] = {}
    if not (cfg.csv or cfg.parquet):
        return outputs
    arrow = con.sql(f"SELECT * FROM {quote_ident(table)}").to_arrow_table()
    if cfg.csv:
        import pyarrow.csv as pacsv

        pacsv.write_csv(arrow, str(cfg.csv))
        outputs["csv"] = Path(cfg.csv)
    if cfg.parquet:
        import pyarrow.parquet as pq

        pq.write_table(arrow, str(cfg.parquet))
        outputs["parquet"] = Path(cfg.parquet)
    return outputs
