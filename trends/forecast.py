"""Forecasts of each group's index with statsforecast, chosen and checked out of sample.

For every series (one group's `net_index` per bucket; empty buckets carry the last
value forward, buckets before the group's first row are left out):

1. **Candidates.** Naive, WindowAverage(--window), AutoETS, AutoTheta, SeasonalNaive
   when the series holds three seasons (7 days, 12 months, 52 weeks), and AutoARIMA
   when there are at most `ARIMA_MAX_SERIES` series: statsforecast's AutoARIMA costs
   about 0.25 s a fit on a 133-bucket series (2 cores), against ~0.02 s for AutoETS,
   and on the series measured it was no better than AutoETS/AutoTheta.
2. **Rolling-origin backtest** (`StatsForecast.cross_validation`): every candidate
   forecasts 1..H buckets ahead from each of the last origins. The models are fitted
   once on the data before the first origin and then only updated with the new
   observations (`refit=False`; Naive and WindowAverage refit, which costs nothing),
   so no forecast ever sees its own target.
3. **Choice, evaluated honestly.** At each origin the product uses the candidate with
   the lowest one-step MAE on the origins before it (online selection), so the skill
   reported for "auto" is what following the product would have given, selection
   included. The forecast for the future uses the candidate with the lowest one-step
   MAE over all origins.
4. **Bands by split conformal prediction.** The band for step s is the forecast +/- the
   empirical 80% / 95% quantile of the chosen model's past |errors| at step s. Coverage
   is measured the same way online: each origin's band uses only errors known by then.
5. **Short series** (too few buckets for `MIN_ORIGINS` backtest origins after
   `MIN_TRAIN` training buckets: `min_points(horizon)`) get WindowAverage without a
   backtest, and the result says so.

Indexes live in [-1, 1]; forecasts and bands are clamped to it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from marketpulse.errors import MarketpulseError

SEASONS = {"day": 7, "week": 52, "month": 12}
LEVELS = (80, 95)
# backtest origins a series needs: as many errors as the 80% band needs (the 95% band
# needs 19: ceil(0.95 (n + 1)) <= n; until then it is NULL)
MIN_ORIGINS = 10
MAX_ORIGINS = 24  # backtest origins per series (the most recent ones)
MIN_TRAIN = 8  # buckets before the first origin
ARIMA_MAX_SERIES = 20
CONFORMAL_WINDOW = 20  # most recent errors a band is calibrated on
MIN_ERRORS = 10  # past errors needed before a conformal band (and its coverage) counts
AUTO = "auto"
SHORT = "WindowAverage (short series)"


@dataclass(frozen=True)
class Forecasts:
    future: pd.DataFrame  # unique_id, step, model, forecast, lo_80, hi_80, lo_95, hi_95
    backtest: (
        pd.DataFrame
    )  # unique_id, model, step, mae, mase, coverage_80, coverage_95, points, chosen
    history: (
        pd.DataFrame
    )  # unique_id, t (index of the bucket forecast from), forecast_next, low, high
    skill: dict  # series, beat_naive, median MASE ratio (see skill_line)


def min_points(horizon: int) -> int:
    """Buckets a series needs for a backtest: training buckets, then MIN_ORIGINS origins
    each followed by `horizon` buckets."""
    return MIN_TRAIN + horizon - 1 + MIN_ORIGINS


def require_statsforecast():
    try:
        import statsforecast
    except ImportError as exc:
        raise MarketpulseError(
            f"trends forecasts need statsforecast, which is not installed ({exc}); install "
            "it with `pip install 'marketpulse[trends]'`"
        ) from exc
    return statsforecast


def candidates(season: int | None, window: int, arima: bool) -> list:
    from statsforecast.models import (
        AutoARIMA,
        AutoETS,
        AutoTheta,
        Naive,
        SeasonalNaive,
        WindowAverage,
    )

    models = [Naive(), WindowAverage(window_size=window), AutoETS(), AutoTheta()]
    if season:
        models.append(SeasonalNaive(season_length=season))
    if arima:
        models.append(AutoARIMA())
    return models


def forecast_series(
    series: dict[str, np.ndarray],
    season: int | None,
    window: int,
    horizon: int,
    max_origins: int = MAX_ORIGINS,
) -> Forecasts:
    """Forecast every series (`{unique_id: values in bucket order}`) `horizon` buckets ahead.

    `season`: buckets per seasonal cycle (SEASONS[grain]), None for none."""
    require_statsforecast()
    futures, backtests, histories = [], [], []
    by_origins: dict[tuple[int, bool], dict[str, np.ndarray]] = {}
    for uid, y in series.items():
        if len(y) < min_points(horizon):
            futures.append(_short_future(uid, y, window, horizon))
            continue
        origins = min(max_origins, len(y) - MIN_TRAIN - horizon + 1)
        # the first backtest fit sees len - origins - horizon + 1 buckets
        seasonal = bool(season) and len(y) - origins - horizon + 1 >= 2 * season
        by_origins.setdefault((origins, seasonal), {})[uid] = y
    for (origins, seasonal), group in by_origins.items():
        models = candidates(season if seasonal else None, window, len(series) <= ARIMA_MAX_SERIES)
        f, b, h = _backtest_and_forecast(group, models, origins, horizon)
        futures.append(f)
        backtests.append(b)
        histories.append(h)
    future = pd.concat(futures, ignore_index=True) if futures else _empty_future()
    backtest = pd.concat(backtests, ignore_index=True) if backtests else pd.DataFrame()
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    skill = {**_skill(backtest, len(series)), "min_points": min_points(horizon)}
    return Forecasts(future, backtest, history, skill)


def _frame(group: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "unique_id": np.repeat(list(group), [len(y) for y in group.values()]),
            "ds": np.concatenate([np.arange(len(y)) for y in group.values()]),
            "y": np.concatenate(list(group.values())),
        }
    )


def _cross_validate(sf_cls, models, df, h: int, origins: int) -> pd.DataFrame:
    """One frame of backtest forecasts: the cheap models refit, the others update."""
    cheap = [m for m in models if type(m).__name__ in ("Naive", "WindowAverage", "SeasonalNaive")]
    fitted = [m for m in models if m not in cheap]
    kwargs = {"df": df, "h": h, "n_windows": origins, "step_size": 1}
    out = sf_cls(models=cheap, freq=1, n_jobs=1).cross_validation(**kwargs, refit=True)
    if fitted:
        other = sf_cls(models=fitted, freq=1, n_jobs=1).cross_validation(**kwargs, refit=False)
        out = out.merge(other, on=["unique_id", "ds", "cutoff", "y"])
    out["step"] = out["ds"] - out["cutoff"]
    return out


def _backtest_and_forecast(group, models, origins: int, horizon: int):
    from statsforecast import StatsForecast

    names = [repr(m) for m in models]
    df = _frame(group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from the Auto* searches
        one = _cross_validate(StatsForecast, models, df, 1, origins + horizon - 1)
        many = _cross_validate(StatsForecast, models, df, horizon, origins)
        future = StatsForecast(models=models, freq=1, n_jobs=1).forecast(df=df, h=horizon)
    future["step"] = (
        future["ds"] - df.groupby("unique_id")["ds"].max().reindex(future["unique_id"]).to_numpy()
    )
    futures, backtests, histories = [], [], []
    for uid, y in group.items():
        scale = np.mean(np.abs(np.diff(y[: len(y) - origins - horizon + 1]))) or np.nan
        cv1 = one[one["unique_id"] == uid].sort_values("cutoff")
        errors1 = {m: _errors(cv1[m], cv1["y"]) for m in names}
        best = min(names, key=lambda m: errors1[m].mean())
        online = _online_choice(errors1, names)
        histories.append(_history(uid, cv1, online, errors1))
        cvh = many[many["unique_id"] == uid]
        backtests.append(_metrics(uid, cvh, names, best, online, cv1, scale, horizon))
        futures.append(_future(uid, future[future["unique_id"] == uid], best, cvh))
    return (
        pd.concat(futures, ignore_index=True),
        pd.concat(backtests, ignore_index=True),
        pd.concat(histories, ignore_index=True),
    )


def _errors(pred, actual) -> np.ndarray:
    """Absolute errors; a missing (NaN) forecast counts as infinitely wrong, so a model
    that could not forecast an origin is never chosen on it."""
    err = np.abs(np.asarray(pred, float) - np.asarray(actual, float))
    return np.where(np.isnan(err), np.inf, err)


def _online_choice(errors: dict[str, np.ndarray], names: list[str]) -> list[str]:
    """Per origin, the model with the lowest mean one-step error on the origins before it
    (the first origin, with no past, takes the window average)."""
    stacked = np.vstack([errors[m] for m in names])  # (models, origins)
    past = np.cumsum(stacked, axis=1) - stacked
    choice = [names[int(np.argmin(past[:, k]))] if k else names[1] for k in range(stacked.shape[1])]
    return choice


def _quantile(errors: np.ndarray, level: int) -> float:
    """Split-conformal quantile of the last CONFORMAL_WINDOW |errors|: the ceil((n+1) p)-th
    smallest (inf when there are too few). Recent errors only, because a series' error
    scale drifts (and early origins' choices are the least informed)."""
    errors = errors[-CONFORMAL_WINDOW:]
    n = len(errors)
    k = int(np.ceil((n + 1) * level / 100))
    if n < MIN_ERRORS or k > n:
        return np.inf
    return float(np.sort(errors)[k - 1])


def _history(uid, cv1, online, errors1) -> pd.DataFrame:
    """One-step forecasts the product would have made at each origin, with their 95% band."""
    rows = []
    for k, (_, row) in enumerate(cv1.iterrows()):
        model = online[k]
        q = _quantile(errors1[model][:k], 95)
        f = float(row[model])
        low, high = (f - q, f + q) if np.isfinite(q) else (np.nan, np.nan)
        rows.append((uid, int(row["cutoff"]), f, low, high))
    return pd.DataFrame(rows, columns=["unique_id", "t", "forecast_next", "low", "high"])


def _metrics(uid, cvh, names, best, online, cv1, scale, horizon) -> pd.DataFrame:
    """MAE, MASE and online conformal coverage per model and step; `auto` is the product."""
    cutoffs = sorted(cvh["cutoff"].unique())
    one_cut = cv1["cutoff"].to_numpy()
    auto_by_cutoff = dict(zip(one_cut, online, strict=True))
    rows = []
    for model in [*names, AUTO]:
        for step in range(1, horizon + 1):
            at = cvh[cvh["step"] == step].set_index("cutoff").loc[cutoffs]
            errs = {m: _errors(at[m], at["y"]) for m in names}
            pick = [auto_by_cutoff[c] for c in cutoffs] if model == AUTO else [model] * len(cutoffs)
            err = np.array([errs[m][k] for k, m in enumerate(pick)])
            covered = {level: [] for level in LEVELS}
            for k, m in enumerate(pick):
                # the band shipped at origin k: model m's errors at this step whose
                # targets were known by then
                known = errs[m][: max(0, k - step + 1)]
                for level in LEVELS:
                    q = _quantile(known, level)
                    if np.isfinite(q):
                        covered[level].append(err[k] <= q)
            rows.append(
                {
                    "unique_id": uid,
                    "model": model,
                    "step": step,
                    "mae": float(err.mean()),
                    "mase": float(err.mean() / scale) if scale == scale else np.nan,
                    "coverage_80": float(np.mean(covered[80])) if covered[80] else np.nan,
                    "coverage_95": float(np.mean(covered[95])) if covered[95] else np.nan,
                    "points": len(err),
                    "coverage_points": len(covered[80]),
                    "chosen": model == best,
                }
            )
    return pd.DataFrame(rows)


def _future(uid, fc, best, cvh) -> pd.DataFrame:
    rows = []
    for _, row in fc.sort_values("step").iterrows():
        step = int(row["step"])
        at = cvh[cvh["step"] == step].sort_values("cutoff")
        err = _errors(at[best], at["y"])
        f = float(row[best])
        out = {"unique_id": uid, "step": step, "model": best, "forecast": f}
        for level in LEVELS:
            q = _quantile(err, level)
            out[f"lo_{level}"] = f - q if np.isfinite(q) else np.nan
            out[f"hi_{level}"] = f + q if np.isfinite(q) else np.nan
        rows.append(out)
    return _clamp(pd.DataFrame(rows))


def _short_future(uid, y, window: int, horizon: int) -> pd.DataFrame:
    f = float(np.mean(y[-window:]))
    return pd.DataFrame(
        {
            "unique_id": uid,
            "step": np.arange(1, horizon + 1),
            "model": SHORT,
            "forecast": f,
            **{f"{side}_{level}": np.nan for side in ("lo", "hi") for level in LEVELS},
        }
    )


def _empty_future() -> pd.DataFrame:
    cols = ["unique_id", "step", "model", "forecast"]
    cols += [f"{side}_{level}" for level in LEVELS for side in ("lo", "hi")]
    return pd.DataFrame(columns=cols)


def _clamp(frame: pd.DataFrame) -> pd.DataFrame:
    for col in ["forecast", *(f"{s}_{lv}" for lv in LEVELS for s in ("lo", "hi"))]:
        frame[col] = frame[col].clip(-1, 1)
    return frame


def _skill(backtest: pd.DataFrame, n_series: int) -> dict:
    """How the product's one-step forecasts ("auto") compare with naive, per series."""
    if backtest.empty:
        return {"series": n_series, "backtested": 0}
    one = backtest[backtest["step"] == 1].pivot(index="unique_id", columns="model", values="mae")
    naive, auto = one["Naive"], one[AUTO]
    window = one[[c for c in one.columns if c.startswith("WindowAverage")][0]]
    ratio = (auto / naive).replace([np.inf, -np.inf], np.nan).dropna()
    auto_cov = backtest[(backtest["model"] == AUTO)]
    checks = auto_cov["coverage_points"]

    def pooled(col: str) -> float:  # weighted by the checks each rate rests on
        ok = auto_cov[col].notna()
        return (
            float((auto_cov[col][ok] * checks[ok]).sum() / checks[ok].sum()) if ok.any() else np.nan
        )

    return {
        "series": n_series,
        "backtested": len(one),
        "beat_naive": int((auto < naive).sum()),
        "beat_window": int((auto <= window).sum()),
        "mae_ratio_naive": float(ratio.median()) if len(ratio) else None,
        "coverage_80": pooled("coverage_80"),
        "coverage_95": pooled("coverage_95"),
    }


def skill_line(skill: dict) -> str:
    """The report's one line on whether to trust the forecasts."""
    if not skill:
        return "forecasts: not computed (--horizon 0)"
    if not skill.get("backtested"):
        return (
            f"forecasts: no series has {skill['min_points']} buckets yet, so none was backtested; "
            "the forecast is the window average and its skill is unknown"
        )
    ratio = skill["mae_ratio_naive"]
    better = (1 - ratio) * 100 if ratio is not None else float("nan")
    verdict = (
        f"beat naive by {better:.0f}% (median one-step MAE ratio)"
        if better > 0
        else f"do not beat naive (median one-step MAE {-better:.0f}% worse)"
    )
    cov80, cov95 = skill["coverage_80"], skill["coverage_95"]
    bands = (
        f"bands covered {cov80:.0%} (80%) and {cov95:.0%} (95%) out of sample"
        if cov80 == cov80 and cov95 == cov95  # not NaN
        else f"band coverage not measured yet (needs {MIN_ERRORS} past errors before an origin)"
    )
    return (
        f"forecasts {verdict}; better than naive on {skill['beat_naive']} of "
        f"{skill['backtested']} backtested series, at or below the window average on "
        f"{skill['beat_window']}; {bands}"
    )
