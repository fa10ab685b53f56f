"""What trends refuses, checked before anything is written: one `MarketpulseError` each,
naming the flag or the view that fixes it.

`check_config` checks the flags alone, before --db is opened. `check_source` checks the
inputs on the run's connection: the --source columns and their types (a number column of
epoch times gets the view that converts it), times that fall in no bucket, an id column
that keys the source and matches `scores.id`, results tables that are there and hold
this source's scores, trend table names that would replace an input, and a source or a
table that has the latest-scores view's name. `check_owners` refuses to replace another source's trend tables (each names
its source in its comment: `queries.source_note`), and `check_collisions` --by columns
that would clash with a column trends makes. The label checks are `labels.py`'s; those
on where the results tables are, `inputs.py`'s. Nothing here writes.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from marketpulse.errors import MarketpulseError
from marketpulse.results_schema import MODELS, RUNS, sanitize
from marketpulse.runtime.source import key_problems
from marketpulse.sql import (
    ascii_fold,
    quote_ident,
    quote_table,
    require_columns,
    spell_table,
    split_table,
    table_columns,
)
from marketpulse.trends import inputs, queries
from marketpulse.trends.notes import score_command

if TYPE_CHECKING:
    from marketpulse.trends.stage import TrendsConfig

TIME_TYPES = ("DATE", "TIMESTAMP", "VARCHAR")  # VARCHAR: ISO-8601 text, cast at its UTC instant
TIME_KINDS = "DATE, TIMESTAMP, TIMESTAMPTZ or ISO-8601 text"  # what --time-col takes, for messages
# scores.id joins a source id of the same family; across families DuckDB casts every value
# (text to a number) and fails on the first that does not convert
INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                 "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")  # fmt: skip
# The --plot formats: what matplotlib's Agg canvas saves on every supported matplotlib
# (`Figure().canvas.get_supported_filetypes()`, checked by a test) without anything else
# installed: not pgf (it runs LaTeX), nor gif and avif (matplotlib 3.10+ only). Static, so
# that check_config refuses `--plot out.txt` before anything is written without importing
# matplotlib.
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "ps", "eps", "jpg", "jpeg", "tif", "tiff", "webp",
                "raw", "rgba")  # fmt: skip


def plot_path(path) -> Path:
    """The file --plot writes: `path`, or `path`.png without an extension, as matplotlib
    names it (the extension picks the format, in any letter case)."""
    path = Path(path)
    return path if path.suffix else path.with_name(path.name.rstrip(".") + ".png")


def check_config(cfg: TrendsConfig) -> None:
    """The flags alone, checked before --db is opened."""
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
            f"invalid --trend-table {cfg.trend_table!r}; use ASCII letters, digits and _, "
            "not starting with a digit (a table in the database's main schema)"
        )
    if cfg.plot is not None:
        _check_plot(Path(cfg.plot))
    plot = cfg.plot and plot_path(cfg.plot)
    for flag, path in (("--csv", cfg.csv), ("--parquet", cfg.parquet), ("--plot", plot)):
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


def _check_plot(path: Path) -> None:
    """A --plot path matplotlib can write, with matplotlib there: refused before the trend
    tables are written, not after."""
    ext = plot_path(path).suffix[1:]
    if ext.lower() not in PLOT_FORMATS:
        raise MarketpulseError(
            f"--plot {path}: matplotlib cannot draw a .{ext} file; pass a path ending in "
            f"{', '.join('.' + f for f in PLOT_FORMATS)} (e.g. {path.with_suffix('.png')})"
        )
    if importlib.util.find_spec("matplotlib") is None:
        raise MarketpulseError(
            "--plot needs matplotlib; install it with `pip install 'marketpulse[trends]'`, or "
            "leave out --plot"
        )


def check_source(
    con, cfg: TrendsConfig, res: inputs.ResultsTables, outputs: list[str], view: str
) -> None:
    """Every input, checked before anything is written."""
    _check_latest_view(con, cfg, res, view)
    cols = {"--id-col": cfg.id_col, "--time-col": cfg.time_col}
    have = require_columns(con, cfg.source, cols, table_flag="--source")
    for col in cfg.by:
        require_columns(con, cfg.source, {"--by": col}, table_flag="--source")
    if cfg.text_col:
        _check_text_col(con, cfg)
    time_type = have[cfg.time_col].upper()
    if not time_type.startswith(TIME_TYPES):
        hint = _numeric_time_hint(con, cfg, time_type)
        raise MarketpulseError(
            f"column {cfg.time_col!r} is {have[cfg.time_col]}, not a date or timestamp; "
            f"{hint}pass --time-col with a {TIME_KINDS} column"
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
            f"into its own results table (`{score_command(cfg, own)}`) and pass "
            f"--scores-table {own}"
        )
    _check_outputs(cfg, outputs, view)


def _check_latest_view(con, cfg: TrendsConfig, res: inputs.ResultsTables, view: str) -> None:
    """Refuse names that the latest-scores view `view` would take over. The run makes it
    as a temporary view, which DuckDB resolves before any table of that name (so a
    --source of that name would read the view instead), and then, scores in --db, writes
    it to --db's main schema with CREATE OR REPLACE VIEW, which fails at the very end on a
    table of that name (one an analyst materialized for speed, say)."""
    scores = split_table(cfg.scores_table)[-1]
    fix = "or pass --scores-table with a results table of another name (its view is latest_<name>)"
    database = queries.Database.of(con)
    source = queries.source_parts(cfg.source, database)
    if (
        len(source) == 2
        and ascii_fold(source[0]) == "main"
        and ascii_fold(source[1]) == ascii_fold(view)
    ):
        raise MarketpulseError(
            f"--source {cfg.source!r} has the name of the view trends makes of the newest "
            f"score per id in {scores!r} ({view}), which would stand in for the source; pass "
            f"as --source the rows under another name (rename the table, or a view of it), "
            f"{fix}"
        )
    if res.apart:  # the view stays temporary: nothing of that name is written to --db
        return
    row = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND lower(table_name) = lower(?)",
        [view],
    ).fetchall()
    taken = [r[0] for r in row if ascii_fold(r[0]) == ascii_fold(view)]
    if taken:
        name = spell_table([taken[0]])
        raise MarketpulseError(
            f"{cfg.db} has a table {taken[0]!r}, the name of the view trends keeps of the "
            f"newest score per id in {scores!r}, so the run could not write that view; rename "
            f"or drop the table (e.g. ALTER TABLE {name} RENAME TO {view}_snapshot), {fix}"
        )


def _numeric_time_hint(con, cfg: TrendsConfig, time_type: str) -> str:
    """For a number column of epoch times (or yyyymmdd dates), the view that converts it,
    read from the size of its values; else ""."""
    integer = time_type in INTEGER_TYPES
    if not (integer or time_type.startswith(("DOUBLE", "FLOAT", "REAL", "DECIMAL"))):
        return ""
    t = quote_ident(cfg.time_col)
    as_double = f"CAST({t} AS DOUBLE)"
    (top,) = con.execute(
        f"SELECT max(abs({as_double})) FROM {quote_table(cfg.source)} WHERE isfinite({as_double})"
    ).fetchone()
    if top is None:
        return ""
    ms = f"epoch_ms({t})" if integer else f"to_timestamp({t} / 1000)"
    if 19000101 <= top <= 21001231 and integer:
        what = "yyyymmdd dates"
        convert = f"strptime(CAST({t} AS VARCHAR), '%Y%m%d')"
        other = ""
    elif 1e8 <= top < 1e11:
        what, convert = "epoch seconds", f"to_timestamp({t})"
        other = f" ({ms} if it holds milliseconds)"
    elif 1e11 <= top < 1e14:
        what, convert = "epoch milliseconds", ms
        other = f" (to_timestamp({t}) if it holds seconds)"
    elif 1e14 <= top < 1e17:
        what = "epoch microseconds"
        convert = f"make_timestamp({t})" if integer else f"to_timestamp({t} / 1000000)"
        other = f" (to_timestamp({t}) if it holds seconds)"
    else:
        return ""
    return (
        f"its values look like {what}: pass as --source a view that converts it, e.g. "
        f"SELECT * REPLACE ({convert} AS {t}) FROM {cfg.source}{other}, or "
    )


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


def _own_results_table(cfg: TrendsConfig) -> str:
    """A results table name for --source alone that `score` accepts: plain (no quotes,
    not starting with a digit) and not the scores table it must not share."""
    own = f"{sanitize(split_table(cfg.source)[-1])}_scores"
    own = f"t_{own}" if own[0].isdigit() else own
    return f"{own}_2" if own.lower() == split_table(cfg.scores_table)[-1].lower() else own


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


def check_owners(con, cfg: TrendsConfig, names: list[str], database: queries.Database) -> None:
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
            parts = queries.source_parts(cfg.source, database)
            alt = f"trend_{'_'.join(queries.name_part(p) for p in parts)}_{cfg.grain}"
            alt = f"{names[0]}_2" if ascii_fold(alt) == ascii_fold(names[0]) else alt
            if not queries.is_plain_name(alt):  # --trend-table takes ASCII names only
                alt = f"trend_source2_{cfg.grain}"
            raise MarketpulseError(
                f"table {name} of {cfg.db} holds the trends of {other}, whose tables have the "
                f"names that {cfg.source!r} derives; pass --trend-table {alt} (or another name) "
                f"to keep both, or drop the tables of {other} to replace them"
            )


def check_collisions(by: tuple[str, ...], labels: list[str], forecasts: bool) -> None:
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
