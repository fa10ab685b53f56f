"""Draw a trend table: the net sentiment index per group over time, flagged shifts marked.

matplotlib is imported inside `plot_trends` (Agg backend, no display needed), so the
runtime imports without it and only `--plot` needs the `trends` extra.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from marketpulse.errors import MarketpulseError


def plot_trends(result, path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write a PNG of `rows` (trend table rows) to `path` and return the path."""
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
        key = " / ".join(str(row[c]) for c in result.by) or "all"
        series[key].append(row)

    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    try:
        for key, points in sorted(series.items()):
            points.sort(key=lambda r: r["bucket"])
            xs = [r["bucket"] for r in points]
            ys = [r["net_index"] if r["net_index"] is not None else float("nan") for r in points]
            (line,) = ax.plot(xs, ys, marker=".", label=key)
            _draw_forecast(ax, points, line.get_color())
            shifts = [r for r in points if r["is_shift"]]
            if shifts:
                ax.scatter(
                    [r["bucket"] for r in shifts],
                    [r["net_index"] for r in shifts],
                    s=160,
                    facecolors="none",
                    edgecolors="red",
                    linewidths=2,
                    zorder=5,
                )
                for r in shifts:
                    ax.annotate(
                        f"{key}\nz={r['z_score']:+.1f}",
                        (r["bucket"], r["net_index"]),
                        textcoords="offset points",
                        xytext=(8, -22 if r["z_score"] < 0 else 10),
                        fontsize=8,
                        color=line.get_color(),
                    )
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(f"net index = ({result.positive} - {result.negative}) / volume")
        ax.set_xlabel(
            f"{result.grain} (red circles: |z| >= {result.z_threshold:g}; dashed: next-{result.grain} forecast)"
        )
        ax.set_title(f"{result.trend_table}")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)


def _draw_forecast(ax, points: list[dict[str, Any]], color) -> None:
    """A dashed step from the last bucket to the forecast for the next one, with its interval."""
    last = points[-1]
    if len(points) < 2 or last["forecast_next"] is None or last["net_index"] is None:
        return
    step = last["bucket"] - points[-2]["bucket"]  # day, week, or about a month
    nxt = last["bucket"] + step
    ax.plot([last["bucket"], nxt], [last["net_index"], last["forecast_next"]], "--", color=color)
    if last["forecast_low"] is not None:
        low = last["forecast_next"] - last["forecast_low"]
        high = last["forecast_high"] - last["forecast_next"]
        ax.errorbar(
            [nxt],
            [last["forecast_next"]],
            yerr=[[low], [high]],
            fmt="o",
            mfc="white",
            color=color,
            capsize=3,
        )
