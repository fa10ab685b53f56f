"""What trends tells the user besides its errors: the lines it logs to stderr and keeps in
`TrendsResult`, and the fix each names.

`unscored_note` says how much of the source no model scored, `stray_note` which stray
times stretch the bucket grid (or lie later than now), `models_note` which model versions
the latest scores mix; each is "" when there is nothing to say. `all_skipped_note` is an
error's text: the scorer skipped every scored row, why (its reasons) and the fix. `score_command` is the
`marketpulse score` line the notes and the errors suggest, quoted for a shell, and
`waiting` the line logged while another process holds --db. Labels left out of a default
side are `labels.left_out_note`'s. These functions read and never write.
"""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING

import duckdb

from marketpulse.results_schema import SCORES
from marketpulse.sql import quote_ident, quote_table
from marketpulse.trends import queries

if TYPE_CHECKING:
    from marketpulse.trends.stage import TrendsConfig


def unscored_note(cfg: TrendsConfig, source_rows: int, unscored: int) -> str:
    """One line for the log: how much of the source the trend leaves out, and the fix."""
    return (
        f"{unscored:,} of {source_rows:,} rows of {cfg.source!r} ({unscored / source_rows:.1%}) "
        f"have no score and are left out of the trend; finish scoring the source with "
        f"`{score_command(cfg)}` (or pass as --source a view of the rows you mean to score)"
    )


def all_skipped_note(con, cfg: TrendsConfig, res, view: str, skipped: int, unscored: int) -> str:
    """The error when every scored row of the source was skipped by the scorer (NULL or
    empty text, so a NULL label): how many, why (the `reason` counts of the latest
    scores) and the fix, which is upstream of trends: the text column `score` read."""
    try:
        reasons = con.execute(
            f"SELECT coalesce(ls.reason, 'no reason'), count(*) "
            f"FROM {quote_table(cfg.source)} AS src JOIN {quote_ident(view)} AS ls ON ls.id = src.{quote_ident(cfg.id_col)} "
            "WHERE ls.label IS NULL GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
    except duckdb.Error:  # a scores table from before `reason`
        reasons = []
    why = ", ".join(f"{n:,} {reason}" for reason, n in reasons)
    rows = f"all {skipped:,} rows" if not unscored else f"all {skipped:,} scored rows"
    rest = f" ({unscored:,} more have no score)" if unscored else ""
    where = f"in {res.file}: " if res.apart else ""
    return (
        f"{rows} of {cfg.source!r}{rest} were skipped by the scorer (their text is NULL or "
        f"empty{': ' + why if why else ''}), so no row has a label to trend; check the "
        f"--text-col given to `marketpulse score` (the column that holds the text) and the "
        f"source's texts, then delete those results ({where}DELETE FROM {cfg.scores_table} "
        f"WHERE reason IS NOT NULL) and score again: `{score_command(cfg)}`"
    )


def score_command(cfg: TrendsConfig, results_table: str | None = None) -> str:
    """The `marketpulse score` command that scores this source into the results trends
    read (or into `results_table`)."""
    q = shlex.quote  # pasted into a shell: '"Market Posts"' keeps its quotes
    where = f" --results-db {q(str(cfg.results_db))}" if cfg.results_db is not None else ""
    results_table = results_table or cfg.scores_table
    table = f" --results-table {q(results_table)}" if results_table != SCORES else ""
    return f"marketpulse score --db {q(str(cfg.db))} --table {q(cfg.source)}{where}{table} ..."


def stray_note(con, cfg: TrendsConfig, table: str, view: str) -> str:
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


def models_note(con, cfg: TrendsConfig, view: str) -> str:
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


def waiting(cfg: TrendsConfig):
    """What `connect` calls while another process holds --db: one line per wait."""

    def say(waited: float, why: str) -> None:
        print(f"trends: waiting for {cfg.db} ({why}), {waited:.0f}s so far", file=sys.stderr)

    return say


def _rows(n: int) -> str:
    return f"{n:,} row{'' if n == 1 else 's'}"


def _verb(n: int, one: str, many: str) -> str:
    return one if n == 1 else many
