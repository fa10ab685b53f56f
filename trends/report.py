"""What `marketpulse trends` prints: a readable report, or a JSON summary for jobs."""

from __future__ import annotations

import math
from typing import Any

from marketpulse.display import clip, ljust, width
from marketpulse.trends.labels import index_formula

MAX_EXAMPLE = 110  # terminal columns of an example text in the report


def summary(result) -> dict[str, Any]:
    """JSON-ready summary for jobs (`marketpulse trends --json`)."""

    def plain(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}

    return {
        "db": str(result.db),
        "trend_table": result.trend_table,
        "latest_view": result.latest_view,
        "grain": result.grain,
        "positive": result.positive,
        "negative": result.negative,
        "rows": result.n_rows,
        "buckets": result.n_buckets,
        "null_time_rows": result.null_time_rows,
        "skipped_rows": result.skipped_rows,  # scored without a label (empty text, ...)
        "sparse_note": result.sparse_note or None,  # stray times stretch the grid
        "models_note": result.models_note or None,  # several model versions behind it
        "labels_note": result.labels_note or None,  # graded labels a default side leaves out
        # source rows no model scored, left out of the trend (`marketpulse score` finishes it)
        "source_rows": result.source_rows,
        "unscored_rows": result.unscored_rows,
        "unscored_share": unscored_share(result),
        "results_db": str(result.results_db) if result.results_db else None,
        "latest": [plain(r) for r in result.latest],
        "flagged": [plain(r) for r in result.flagged],
        "outputs": {k: str(v) for k, v in result.outputs.items()},
        "forecast_table": result.forecast_table,
        "backtest_table": result.backtest_table,
        "forecast_skill": result.skill,
        "drivers_table": result.drivers_table,
    }


def unscored_share(result) -> float | None:
    """The share of the source's rows that have no score (None for an empty source)."""
    if not result.source_rows:
        return None
    return result.unscored_rows / result.source_rows


def format_report(result, max_flagged: int = 20) -> str:
    """A readable summary: the latest bucket of each group, the flagged shifts, and why
    they happened (when drivers were computed)."""
    from marketpulse.trends.forecast import skill_line

    lines = [
        f"{result.trend_table}: {result.n_rows} rows ({result.n_buckets} {result.grain} buckets"
        f"{' x ' + _plural(len(result.latest), 'group') if result.by else ''}), "
        f"index = {index_formula(result.positive, result.negative)}; "
        + (
            f"latest scores per id in view {result.latest_view}"
            if result.latest_view
            else f"scores read from {result.results_db} (--results-db)"
        ),
        skill_line(result.skill)
        + (
            f" (backtest: {result.backtest_table}; next buckets: {result.forecast_table})"
            if result.forecast_table
            else ""
        ),
    ]
    if result.unscored_rows:
        lines.append(
            f"left out: {result.unscored_rows:,} of {result.source_rows:,} source rows "
            f"({unscored_share(result):.1%}) that no model has scored; run `marketpulse score` "
            "on the source to finish it"
        )
    if result.null_time_rows:
        lines.append(
            f"left out: {result.null_time_rows:,} scored rows with a NULL "
            f"{result.time_col or 'time column'}"
        )
    if result.skill and result.skill.get("stale"):
        lines.append(
            f"note: {stale_note(result.skill['stale'], result.grain, result.skill['window'])}"
        )
    if result.models_note:
        lines.append(f"note: {result.models_note}")
    if result.labels_note:
        lines.append(f"note: {result.labels_note}")
    if result.sparse_note:
        lines.append(f"warning: {result.sparse_note}")
    if result.skipped_rows:
        lines.append(
            f"left out: {result.skipped_rows:,} rows the scorer skipped without a label "
            "(empty or unreadable text; scores.reason says why)"
        )
    lines += ["", f"Latest {result.grain} per group:"]
    head = [*result.by, "bucket", "volume", "index", "rolling", "change", "z", "next [interval]"]
    rows = [
        [
            *(group_text(r[c]) for c in result.by),
            str(r["bucket"]),
            str(r["volume"]),
            _num(r["net_index"]),
            _num(r["index_rolling"]),
            _num(r["index_change"], signed=True),
            _num(r["z_score"], signed=True),
            _forecast(r),
        ]
        for r in result.latest
    ]
    lines += _table(head, rows)
    lines.append("")
    flagged = result.flagged
    if not flagged:
        lines.append(f"No shifts flagged (p <= {result.alpha:g}).")
        return "\n".join(lines)
    lines.append(f"Flagged shifts (p <= {result.alpha:g}): {len(flagged)}")
    head = [*result.by, "bucket", "volume", "index", "trailing mean", "z"]
    rows = [
        [
            *(group_text(r[c]) for c in result.by),
            str(r["bucket"]),
            str(r["volume"]),
            _num(r["net_index"]),
            _num(r["trailing_mean"]),
            _num(r["z_score"], signed=True),
        ]
        for r in flagged[-max_flagged:]
    ]
    lines += _table(head, rows)
    if len(flagged) > max_flagged:
        lines.append(
            f"... {len(flagged) - max_flagged} earlier ones: "
            f"SELECT * FROM {result.trend_table} WHERE is_shift"
        )
    if result.drivers_table:
        lines += ["", *_drivers(result, flagged[-max_flagged:])]
    return "\n".join(lines)


def _drivers(result, flagged: list[dict[str, Any]], terms: int = 6) -> list[str]:
    """Per flagged bucket: its top terms (log-odds z, posts, share of the shift) and one
    example post."""
    from marketpulse.privacy import mask
    from marketpulse.trends.drivers import MIN_SHARE

    lines = [
        "Why (words over-represented against the trailing window, with their z, posts and "
        f"share of the shift; {result.drivers_table}):"
    ]
    for shift in flagged:
        group = tuple(shift[c] for c in result.by)
        rows = [
            r
            for r in result.drivers
            if r["bucket"] == shift["bucket"] and tuple(r[c] for c in result.by) == group
        ]
        where = " / ".join(map(group_text, group)) + (" " if group else "") + str(shift["bucket"])
        if not rows:
            lines.append(
                f"  {where}: no term stands out (no over-represented term's posts account "
                f"for {MIN_SHARE:.0%} of the shift)"
            )
            continue
        words = ", ".join(
            f"{r['term']} ({r['z']:.1f}, {r['n_bucket']}, {_share(r.get('share_of_shift'))})"
            for r in rows[:terms]
        )
        lines.append(f"  {where} ({rows[0]['direction']}): {words}")
        example = next((e for r in rows for e in (r["examples"] or [])), None)
        if example:
            text = mask(example)
            text = clip(text, MAX_EXAMPLE)  # by display width: CJK takes 2 columns
            lines.append(f'    e.g. "{text}"')
    return lines


def stale_note(stale: list[dict[str, Any]], grain: str, window: int, most: int = 5) -> str:
    """The groups with no rows in the last `window` buckets (`forecast_tables._stale`):
    their model input ends in their last value carried forward, however old, so whatever
    the model (naive repeats it; ETS, Theta or ARIMA may extrapolate from it), the forecast
    rests on it."""
    named = [
        f"{' / '.join(map(group_text, s['group'].values())) or 'the table'} (last rows "
        f"{s['last_bucket']}, {_plural(s['buckets_since'], grain)} before the latest bucket)"
        for s in stale[:most]
    ]
    if len(stale) > most:
        named.append(f"{len(stale) - most} more")
    return (
        f"no rows for more than --window ({_plural(window, grain)}) before the latest bucket: "
        f"{', '.join(named)}; the forecast there is built on that last value carried "
        "forward, so read it with care"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def group_text(value) -> str:
    """A --by value as printed: NULL and the empty string must not read as a value
    (`None`) or as nothing, and neither as the total of a table without groups."""
    if value is None:
        return "(null)"
    return "(empty)" if value == "" else str(value)


def _share(value) -> str:
    """A driver's share_of_shift as a percentage ("-" when unknown)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.0%}"


def _num(value, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _forecast(row) -> str:
    if row.get("forecast_next") is None:  # no forecast, or none computed (--horizon 0)
        return "-"
    if row["forecast_low"] is None:
        return _num(row["forecast_next"])
    return f"{row['forecast_next']:.3f} [{row['forecast_low']:.2f}, {row['forecast_high']:.2f}]"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded by display width (marketpulse.display): a CJK group name takes
    two terminal columns per character."""
    widths = [max([width(h), *(width(r[i]) for r in rows)]) for i, h in enumerate(head)]

    def line(cells) -> str:
        return "  ".join(ljust(c, w) for c, w in zip(cells, widths, strict=True))

    return [line(head), line("-" * w for w in widths)] + [line(r) for r in rows]
