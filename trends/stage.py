"""Trends: turn per-row scores into per-bucket market signals that SQL clients can query.

`run(TrendsConfig)` reads the results tables the scorer writes (`scores`, `models`: in
db, or in the file `score --results-db` wrote, attached read-only: `inputs.py`),
creates or refreshes the `latest_<scores>` view and the `trend_<source>_<grain>` table
(see `queries.py`) with the tables that depend on it (forecasts, backtest, drivers: named
after it by `queries.dependent_tables`, dropped when the run does not build them), all in
one transaction (`publish.py`), and returns a `TrendsResult` with the latest bucket per
group, the flagged shifts and what the trend leaves out (source rows without a score,
scored rows without a time). This module is that run, top to bottom. The inputs are
checked in `checks.py` (each table names its source in its comment, so another source
deriving the same names is refused rather than written over), the index labels picked
in `labels.py`, the lines logged on the way written in `notes.py`. It needs duckdb and
pyarrow only; matplotlib is imported by `plot.py` when a picture is asked for.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from marketpulse.errors import MarketpulseError, first_line
from marketpulse.owned_folders import owned_folder, remove_dead_folders
from marketpulse.results_schema import SCORES
from marketpulse.sql import connect, quote_ident, quote_table
from marketpulse.trends import inputs, queries
from marketpulse.trends.checks import (
    TIME_KINDS,
    check_collisions,
    check_config,
    check_owners,
    check_source,
)
from marketpulse.trends.labels import (
    check_label_columns,
    check_one_scheme,
    left_out_note,
    pick_labels,
    union_labels,
)
from marketpulse.trends.notes import (
    all_skipped_note,
    models_note,
    score_command,
    stray_note,
    unscored_note,
    waiting,
)
from marketpulse.trends.publish import after_commit, publish, write_to

# the scratch file's temp folder holds a flocked owner.lock: a killed run's is swept
SCRATCH_PREFIX = "marketpulse-trends-"
SCRATCH_MAKING_PREFIX = ".marketpulse-trends-making-"


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
    sparse_note: str = ""  # set when stray times stretch the grid (`notes.stray_note`)
    models_note: str = ""  # set when the latest scores come from several model versions
    labels_note: str = ""  # set when a default side leaves out graded labels (`left_out_note`)
    time_col: str = ""
    source_rows: int = 0  # rows of the source
    unscored_rows: int = 0  # of those, rows no model scored: left out of the trend
    results_db: Path | None = None  # where the scores were read, when not db


def run(cfg: TrendsConfig) -> TrendsResult:
    """Build the latest-scores view and the trend table, then export and plot if asked."""
    check_config(cfg)
    if not Path(cfg.db).is_file():
        raise MarketpulseError(f"database {cfg.db} not found; pass --db with an existing file")
    if cfg.results_db is not None and not Path(cfg.results_db).is_file():
        raise MarketpulseError(
            f"results database {cfg.results_db} not found; pass --results-db with the file "
            "`marketpulse score --results-db` wrote the scores to (leave it out when they are "
            "in --db)"
        )
    # Computed on a read-only connection (readers keep reading meanwhile), into a scratch
    # file; then the tables are copied into --db in one short transaction (`publish`).
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
            check_source(con, cfg, res, [table, *dependents.values()], view)
            if cfg.trend_table is None:  # a name of the user's choosing is theirs to reuse
                check_owners(con, cfg, [table, *dependents.values()], database)
            write_to(con, work)
            con.execute(queries.latest_scores_sql(view, res.scores, res.models, temporary=True))
            models, null_times, source_rows, unscored, skipped = _models(con, cfg, res, view)
            labels = union_labels(models)
            positive, negative = pick_labels(models, cfg.positive, cfg.negative)
            check_one_scheme(cfg.source, models, positive, negative)
            left_out = left_out_note(models, positive, negative, cfg.positive, cfg.negative)
            if left_out:
                print(f"trends: note: {left_out}", file=sys.stderr)
            check_label_columns(cfg.source, models)
            check_collisions(cfg.by, labels, forecasts=cfg.horizon > 0)
            if unscored:
                note = unscored_note(cfg, source_rows, unscored)
                print(f"trends: warning: {note}", file=sys.stderr)
            _write_trend_table(con, cfg, table, view, labels, positive, negative)
            mixed = models_note(con, cfg, view) if len(models) > 1 else ""
            sparse = stray_note(con, cfg, table, view)
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
        outputs = publish(cfg, work, [table, *dependents.values()], latest, note)
    if cfg.plot:
        from marketpulse.trends.plot import plot_trends

        with after_commit(cfg, table, "--plot"):
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
        return connect(cfg.db, read_only=True, timeout=cfg.lock_timeout, on_wait=waiting(cfg))
    except duckdb.Error as exc:  # a lock held too long is a MarketpulseError of its own
        raise MarketpulseError(
            f"cannot open {cfg.db} as a DuckDB database ({first_line(exc)[:200]}); pass --db "
            "with the DuckDB file that holds the source"
        ) from exc


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
    if not source_rows:
        raise MarketpulseError(
            f"source {cfg.source!r} of {cfg.db} has no rows, so there is nothing to trend; "
            "pass --source with the table (or view) that holds the scored rows"
        )
    if not rows:
        raise MarketpulseError(
            f"no row of {cfg.source!r} has a score in {cfg.scores_table!r} of {res.file}; "
            f"score it first with `{score_command(cfg)}` or check --id-col"
        )
    for version, model_labels, *_ in rows:
        if model_labels is None:
            raise MarketpulseError(
                f"model version {version} has scores but no row in the models table; "
                "re-run `marketpulse score` so it registers the model"
            )
    null_times = sum(r[3] for r in rows)
    skipped = sum(r[5] for r in rows)
    if not null_times and not sum(r[4] for r in rows):  # no scored row has a label
        raise MarketpulseError(all_skipped_note(con, cfg, res, view, skipped, unscored))
    if not sum(r[4] for r in rows):
        raise MarketpulseError(
            f"no scored row of {cfg.source!r} has a {cfg.time_col!r} ({null_times:,} have it "
            f"NULL, the rest were skipped by the scorer); pass --time-col with a filled column"
        )
    models = [(version, list(labels), int(n)) for version, labels, n, *_ in rows]
    return models, int(null_times), int(source_rows), int(unscored), int(skipped)


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
    made, so `publish` drops an earlier run's: they would forecast from another trend
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
