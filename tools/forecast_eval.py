"""How good are the trend forecasts? Backtests on real series, out of sample.

    python -m marketpulse.tools.forecast_eval [--origins 48] [--horizon 4] [--json FILE]
    make forecast-eval

Runs the trends stage's own forecaster (`marketpulse.trends.forecast.forecast_series`:
candidates, rolling-origin backtest, online model choice, split-conformal bands) on
real series that ship with statsmodels (no download): Nile river flow (100 years),
sunspots (309 years), CO2 at Mauna Loa (monthly means), El Nino sea temperatures
(monthly), and growth rates of six US macro series (quarterly); and, with --data, the
demo's market stream over 104 weeks (real review snippets with their human labels,
dealt to four brands on a simulated timeline; one brand drifts, one has a shock). It
prints, per data
set, the product's one-step MAE ("auto") beside naive and the window average, and the
coverage of its 80% and 95% bands, and exits 1 when the targets are missed:
- auto's one-step MAE at or below the window average's on most series,
- never worse than naive's beyond noise: the mean paired difference of one-step absolute
  errors (auto minus naive, same origins) is not above 2 standard errors,
- pooled coverage within 5 points of 80% and 95%.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from marketpulse import cpu

NOISE_SE = 2.0


def real_series() -> dict[str, tuple[dict[str, np.ndarray], int | None]]:
    """{data set: ({series name: values}, season)} from statsmodels' bundled data."""
    import statsmodels.api as sm

    ds = sm.datasets
    co2 = ds.co2.load_pandas().data["co2"].resample("MS").mean().ffill().to_numpy()
    elnino = ds.elnino.load_pandas().data.drop(columns="YEAR").to_numpy().ravel()
    macro = ds.macrodata.load_pandas().data
    growth = {
        col: np.diff(np.log(macro[col].to_numpy())) * 100
        for col in ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi")
    }
    return {
        "nile (yearly)": ({"nile": ds.nile.load_pandas().data["volume"].to_numpy()}, None),
        "sunspots (yearly)": (
            {"sunspots": ds.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()},
            11,
        ),
        "co2 (monthly)": ({"co2": co2}, 12),
        "elnino (monthly)": ({"elnino": elnino}, 12),
        "macro growth (quarterly)": (growth, 4),
    }


def demo_series(data: Path, weeks: int = 104) -> dict[str, np.ndarray]:
    """Weekly net index per brand of the demo's stream, from the snippets' human labels."""
    from marketpulse.tools.demo_data import SHARED_COPY, StreamSpec, build_stream, read_snippets

    posts = build_stream(read_snippets(data / SHARED_COPY), StreamSpec(weeks=weeks))
    score = {"positive": 1, "negative": -1, "neutral": 0}
    sums: dict[tuple[str, int], list[int]] = {}
    start = min(p.posted_at for p in posts)
    for p in posts:
        week = (p.posted_at - start).days // 7
        sums.setdefault((p.brand, week), []).append(score[p.true_label])
    brands = sorted({b for b, _ in sums})
    return {b: np.array([np.mean(sums[(b, w)]) for w in range(weeks)]) for b in brands}


def evaluate(origins: int, horizon: int, window: int, data: Path | None = None) -> dict:
    import pandas as pd

    from marketpulse.trends.forecast import AUTO, forecast_series

    sets = real_series()
    if data is not None and (data / "amazon_review_snippets").is_dir():
        sets["demo stream (weekly, 104)"] = (demo_series(data), None)
    out = {}
    for name, (series, season) in sets.items():
        start = time.perf_counter()
        result = forecast_series(series, season, window, horizon, max_origins=origins)
        bt = result.backtest
        one = bt[bt["step"] == 1].pivot(index="unique_id", columns="model", values="mae")
        # the window average is left out of series shorter than --window before the backtest
        window_col = next((c for c in one.columns if c.startswith("WindowAverage")), None)
        window_mae = one[window_col] if window_col else pd.Series(np.nan, index=one.index)
        auto = bt[bt["model"] == AUTO]
        out[name] = {
            "series": len(series),
            "auto_mae": float(one[AUTO].mean()),
            "naive_mae": float(one["Naive"].mean()),
            "window_mae": float(window_mae.mean()),
            "auto_le_window": int((one[AUTO] <= window_mae * (1 + 1e-9)).sum()),
            "auto_vs_naive": (one[AUTO] / one["Naive"] - 1).round(4).to_dict(),
            "worse_than_naive_se": _paired_t(result.history, series),
            "chosen": bt[bt["chosen"] & (bt["step"] == 1)]
            .set_index("unique_id")["model"]
            .to_dict(),
            "coverage_80": float(auto["coverage_80"].mean()),
            "coverage_95": float(auto["coverage_95"].mean()),
            # backtest origins (the multi-step ones; one step ahead, horizon - 1 more)
            "origins": int(auto.loc[auto["step"] == horizon, "points"].max()),
            "one_step_origins": int(auto.loc[auto["step"] == 1, "points"].max()),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return out


def _paired_t(history, series: dict[str, np.ndarray]) -> dict[str, float]:
    """Per series: mean(|auto error| - |naive error|) over one-step origins, in standard
    errors (positive: auto worse). Naive's one-step forecast from bucket t is y[t]."""
    out = {}
    for uid, h in history.groupby("unique_id"):
        y = series[uid]
        t = h["t"].to_numpy()
        d = np.abs(h["forecast_next"].to_numpy() - y[t + 1]) - np.abs(y[t] - y[t + 1])
        se = d.std(ddof=1) / np.sqrt(len(d))
        out[uid] = float(d.mean() / se) if se > 0 else 0.0
    return out


def judge(results: dict) -> list[str]:
    misses = []
    n = sum(r["series"] for r in results.values())
    le_window = sum(r["auto_le_window"] for r in results.values())
    if le_window * 2 <= n:
        misses.append(f"auto beat the window average on only {le_window} of {n} series")
    for name, r in results.items():
        for series, t in r["worse_than_naive_se"].items():
            if t > NOISE_SE:
                rel = r["auto_vs_naive"][series]
                misses.append(
                    f"{name} {series}: auto's MAE is {rel:.1%} above naive's ({t:.1f} SE)"
                )
    for level in (80, 95):
        cov = np.mean([r[f"coverage_{level}"] for r in results.values()])
        if abs(cov * 100 - level) > 5:
            misses.append(f"{level}% bands covered {cov:.1%} (outside {level - 5}-{level + 5}%)")
    return misses


@click.command()
@click.option("--origins", default=48, show_default=True, help="Backtest origins per series.")
@click.option("--horizon", default=4, show_default=True)
@click.option("--window", default=4, show_default=True, help="WindowAverage's window.")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MARKETPULSE_DATA",
    help="Folder laid out like ../shared/data: adds the demo stream's series.",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Write the results here."
)
def main(origins: int, horizon: int, window: int, data: Path | None, json_path: str | None) -> None:
    """Backtest the trend forecaster on real series; exit 1 when a target is missed.

    Example: python -m marketpulse.tools.forecast_eval --origins 48
    """
    results = evaluate(origins, horizon, window, data)
    click.echo(f"machine: {cpu.describe()}")
    head = f"{'data set':<26} {'series':>6} {'auto':>8} {'naive':>8} {'window':>8} {'<=win':>6} {'cov80':>6} {'cov95':>6}"
    click.echo(head)
    for name, r in results.items():
        click.echo(
            f"{name:<26} {r['series']:>6} {r['auto_mae']:>8.4g} {r['naive_mae']:>8.4g} "
            f"{r['window_mae']:>8.4g} {r['auto_le_window']:>6} {r['coverage_80']:>6.1%} "
            f"{r['coverage_95']:>6.1%}"
        )
    misses = judge(results)
    if json_path:
        Path(json_path).write_text(json.dumps({"results": results, "misses": misses}, indent=2))
    if misses:
        raise click.ClickException("targets missed: " + "; ".join(misses))
    click.echo(
        "targets met: auto <= window average on most series, never above naive beyond noise, coverage within 5 points"
    )


if __name__ == "__main__":
    main()
