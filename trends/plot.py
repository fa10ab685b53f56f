"""Draw a trend table as small multiples: one panel per group, its net index over time,
flagged shifts circled, and the forecast fan (80% and 95% bands) after the last bucket.

With many groups only the `MAX_PANELS` that matter most are drawn: groups with a flagged
shift first (largest |z| first), then the largest by volume; the figure says how many
groups were left out and names the first few. Every panel shares the y axis [-1, 1] and
one date axis, labelled under the lowest panel of each column: a panel read against
another panel's dates (a group whose last buckets are empty spans fewer of them) would
put its shifts at the wrong time.

matplotlib is imported inside `draw_trends` (Agg backend, no display needed), so the
trends stage imports without it and only `--plot` needs it.

A name the fonts cannot draw (a CJK brand on a machine with matplotlib's own DejaVu
only) is drawn as empty boxes: instead of matplotlib's "Glyph ... missing from font"
UserWarning for each character, `plot_trends` prints one `trends: note:` line naming
the labels concerned. matplotlib's fonts are its own choice (`font.sans-serif` in a
matplotlibrc); none is installed or picked here.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from marketpulse.errors import MarketpulseError
from marketpulse.trends.checks import plot_path
from marketpulse.trends.labels import index_formula
from marketpulse.trends.report import group_text

MAX_PANELS = 12
COLUMNS = 3
# matplotlib's warning for a character no font in its list has (3.6+: "Glyph 26666
# (\N{CJK UNIFIED IDEOGRAPH-682A}) missing from font(s) DejaVu Sans."; before: "Glyph
# 26666 missing from current font.")
_MISSING_GLYPH = re.compile(r"Glyph (\d+)\b.*missing from")


def choose_groups(series: dict[str, list[dict[str, Any]]], limit: int = MAX_PANELS) -> list[str]:
    """The groups to draw: flagged ones by largest |z|, then the rest by total volume."""

    def rank(key: str):
        points = series[key]
        shifts = [abs(r["z_score"]) for r in points if r["is_shift"] and r["z_score"] is not None]
        return (0 if shifts else 1, -max(shifts, default=0.0), -sum(r["volume"] for r in points))

    return sorted(series, key=lambda k: (rank(k), k))[:limit]


def plot_trends(
    result, path: Path, rows: list[dict[str, Any]], forecasts: list[dict[str, Any]] = ()
) -> Path:
    """Draw `rows` (trend table) and `forecasts` (forecast table) to `path` in the format
    its extension names (`checks.PLOT_FORMATS`; none: `path`.png, as matplotlib names it)
    and return the path written; characters the fonts lack are one `trends: note:` line
    on stderr, not a warning each."""
    path = plot_path(path)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            # each missing glyph, not once per code location: collected here, not shown
            warnings.filterwarnings("always", message=r"Glyph \d+", category=UserWarning)
            fig = draw_trends(result, rows, forecasts)
            import matplotlib.pyplot as plt  # there: draw_trends imported it

            try:
                # the format named: a matplotlibrc's savefig.format never renames the file
                fig.savefig(path, format=path.suffix[1:].lower())
            finally:
                plt.close(fig)
    finally:  # out of catch_warnings: the other warnings are shown again, as they were
        missing = _missing_glyphs(caught)
    names = [n for n in _drawn_names(result, rows) if missing & set(n)]
    if missing:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        print(
            f"trends: note: the plot's fonts cannot draw some characters of "
            f"{shown or 'its labels'} (drawn as empty boxes in {path}); name an installed "
            "font that has them in matplotlib's font.sans-serif (matplotlibrc) to draw them",
            file=sys.stderr,
        )
    return path


def _missing_glyphs(caught: list[warnings.WarningMessage]) -> set[str]:
    """The characters of matplotlib's missing-glyph warnings in `caught`; any other
    warning is shown as it would have been."""
    missing: set[str] = set()
    for w in caught:
        found = _MISSING_GLYPH.match(str(w.message)) if w.category is UserWarning else None
        if found:
            missing.add(chr(int(found.group(1))))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    return missing


def _drawn_names(result, rows: list[dict[str, Any]]) -> list[str]:
    """The names the figure draws: its panels' groups, the groups the title names as left
    out, the table and the index's labels (as `draw_trends` draws them)."""
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        series[_key(row, result.by)].append(row)
    shown = choose_groups(series)
    left_out = sorted(set(series) - set(shown))[:8]
    labels = f"{result.positive},{result.negative}".split(",")
    return list(dict.fromkeys([*shown, *left_out, result.trend_table, *labels]))


def draw_trends(result, rows: list[dict[str, Any]], forecasts: list[dict[str, Any]] = ()):
    """The figure of `plot_trends`; the caller closes it (`matplotlib.pyplot.close`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MarketpulseError(
            "--plot needs matplotlib; install it with `pip install 'marketpulse[trends]'`"
        ) from exc

    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        series[_key(row, result.by)].append(row)
    fans: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in forecasts:
        fans[_key(row, result.by)].append(row)
    shown = choose_groups(series)
    left_out = sorted(set(series) - set(shown))

    n_rows = math.ceil(len(shown) / COLUMNS) if len(shown) > 1 else 1
    n_cols = min(COLUMNS, len(shown)) or 1
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(4.2 * n_cols + 1, 2.8 * n_rows + 1.2),
        dpi=110,
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    try:
        for ax, key in zip(axes.flat, shown, strict=False):
            _panel(ax, key, sorted(series[key], key=lambda r: r["bucket"]), fans.get(key, []))
        for ax in list(axes.flat)[len(shown) :]:
            ax.set_visible(False)
        _label_dates(axes, len(shown))
        title = (
            f"{result.trend_table}: net index = {index_formula(result.positive, result.negative)}; "
            f"red circles: shifts at p <= {result.alpha:g}; shaded: 80% / 95% forecast bands"
        )
        if left_out:
            names = ", ".join(left_out[:8]) + (
                f" and {len(left_out) - 8} more" if len(left_out) > 8 else ""
            )
            title += (
                f"\n{len(shown)} of {len(series)} groups shown (flagged shifts first, then by "
                f"volume); left out: {names}"
            )
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _label_dates(axes, shown: int) -> None:
    """Date labels under the lowest drawn panel of each column (sharex leaves them on the
    bottom row only, under panels that may be hidden), short enough not to need rotating."""
    import matplotlib.dates as mdates

    n_cols = axes.shape[1]
    for i, ax in enumerate(list(axes.flat)[:shown]):
        lowest = i + n_cols >= shown
        ax.tick_params(axis="x", labelbottom=lowest)
        ax.xaxis.offsetText.set_visible(lowest)
    if shown:
        locator = mdates.AutoDateLocator(minticks=3, maxticks=6)
        axes.flat[0].xaxis.set_major_locator(locator)  # shared: every panel's axis
        axes.flat[0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _key(row: dict[str, Any], by: tuple[str, ...]) -> str:
    """The panel title: "all" only for a table without groups, never for an empty value."""
    return " / ".join(group_text(row[c]) for c in by) if by else "all"


def _panel(ax, key: str, points: list[dict[str, Any]], fan: list[dict[str, Any]]) -> None:
    xs = [r["bucket"] for r in points]
    ys = [_nan(r["net_index"]) for r in points]
    (line,) = ax.plot(xs, ys, marker=".", markersize=3, linewidth=1)
    color = line.get_color()
    shifts = [r for r in points if r["is_shift"] and r["net_index"] is not None]
    if shifts:
        ax.scatter(
            [r["bucket"] for r in shifts],
            [r["net_index"] for r in shifts],
            s=90,
            facecolors="none",
            edgecolors="red",
            linewidths=1.5,
            zorder=5,
        )
    fan = sorted(fan, key=lambda r: r["step"])
    if fan and points[-1]["net_index"] is not None:
        fx = [points[-1]["bucket"]] + [r["bucket"] for r in fan]
        start = points[-1]["net_index"]
        ax.plot(fx, [start] + [r["forecast"] for r in fan], "--", color=color, linewidth=1)
        for level, alpha in (("95", 0.15), ("80", 0.3)):
            lo = [start] + [_nan(r[f"lo_{level}"]) for r in fan]
            hi = [start] + [_nan(r[f"hi_{level}"]) for r in fan]
            ax.fill_between(fx, lo, hi, color=color, alpha=alpha, linewidth=0)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.set_title(key, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _nan(value) -> float:
    return float("nan") if value is None else value
