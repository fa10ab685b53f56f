"""Forecasts of each group's index with statsforecast, chosen and checked out of sample.

For every series (one group's `net_index` per bucket, NaN for an empty bucket; buckets
before the group's first row are left out):

0. **Empty buckets.** The models need a value in every bucket, so an empty bucket
   carries the last value forward as model input. It is never a target: errors, the
   choice, MAE and band coverage count only buckets that had rows (a carried value is
   what naive predicts, so scoring it would flatter naive and shrink the bands).
1. **Candidates.** Naive, WindowAverage(--window) when the first backtest fit sees at
   least --window buckets (before that it has no forecast), AutoETS, AutoTheta,
   SeasonalNaive when that fit sees two seasons (7 days, 12 months, 52 weeks), and
   AutoARIMA when there are at most `ARIMA_MAX_SERIES` series: statsforecast's AutoARIMA
   costs about 0.25 s a fit on a 133-bucket series (2 cores), against ~0.02 s for
   AutoETS, and on the series measured it was no better than AutoETS/AutoTheta.
   Where that fit sees two seasons, AutoETS and AutoTheta get the season too
   (statsforecast's default, season_length=1, is never seasonal; with it ETS also tries
   seasonal forms, and Theta deseasonalizes when its seasonality test fires), for seasons
   up to `MAX_MODEL_SEASON` buckets: statsforecast's ETS has no seasonal form beyond 24
   (at 52 it would search ~6x longer and drop them all), and Theta's test never fired at
   52 weeks with two years seen, so weekly series are as before. The seasonal ETS search
   costs ~4x the plain one (a daily or monthly forecast of 100 brands takes ~2x as long).
   AutoARIMA stays non-seasonal: seasonal ARIMA made `forecast_eval` 7x slower (El Nino's
   backtest 3.9 s -> 51 s) for one more gain (El Nino's MAE -10%, the rest within 1%).
2. **Rolling-origin backtest** (`StatsForecast.cross_validation`): every candidate
   forecasts 1..H buckets ahead from each of the last origins, and one bucket ahead from
   those and the H - 1 later ones (every bucket whose next one is known: the most recent
   one-step errors count too). Naive, WindowAverage and SeasonalNaive refit at every
   origin (it costs nothing). The others are fitted once, on the buckets before the first
   origin, and then only take in the later buckets with their orders and parameters
   fixed (`refit=False`, the models' `forward`): AutoARIMA picks its order once, there. So no forecast ever sees its own target, and what is
   measured is that one fitted model, not the whole Auto* search redone at each origin
   (that costs ~10x for AutoETS/AutoTheta and ~20x for AutoARIMA). The table's step-1
   rows are those one-step origins, steps 2..H the multi-step ones.
3. **Choice, evaluated honestly.** At each origin the product uses the candidate with
   the lowest one-step MAE on the scored origins before it (online selection; before any
   is scored, the window average, or naive without one), so the skill reported for
   "auto" is what following the product would have given, selection included. The
   forecast for the future uses the candidate with the lowest one-step MAE over all
   origins: the step-1 `mae` of the backtest table, on the same errors. MAEs within
   `TIE_RTOL` of the lowest (floating-point rounding of the same errors, e.g. two fits
   that make the same forecasts) are a tie, won by the candidate listed first in
   `candidates` (Naive, WindowAverage, AutoETS, AutoTheta, SeasonalNaive, AutoARIMA:
   roughly the cheapest first). The shipped forecast is made the way the backtest made
   its forecasts (`_ship`): the shipped model is the one whose errors were measured. A
   candidate that failed to forecast an origin (no forecast, unlike an empty target) is
   left out of the choice from that origin on: the online choice at an origin knows only
   the failures up to it, and the shipped choice, after them all, leaves it out.
4. **Bands by split conformal prediction.** The band for step s is the forecast +/- the
   empirical 80% / 95% quantile of the chosen model's past |errors| at step s. Coverage
   is measured the same way online: each origin's band uses only errors known by then.
5. **Short series** (too few buckets for `MIN_ORIGINS` backtest origins after
   `MIN_TRAIN` training buckets: `min_points(horizon)`) get WindowAverage without a
   backtest, and the result says so. A backtest row with fewer than `MIN_SCORED` scored
   origins (a sparse series) reports its MAE as unknown (NaN, NULL in the tables).

Indexes live in [-1, 1]; forecasts and bands are clamped to it. Unknown figures in
`Forecasts.skill` are None, so it stays valid JSON.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from marketpulse.errors import MarketpulseError

SEASONS = {"day": 7, "week": 52, "month": 12}
# the longest season AutoETS and AutoTheta are given (see 1. above): 7 days, 12 months
MAX_MODEL_SEASON = 24
LEVELS = (80, 95)
# backtest origins a series needs: as many errors as the 80% band needs (the 95% band
# needs 19: ceil(0.95 (n + 1)) <= n; until then it is NULL)
MIN_ORIGINS = 10
MAX_ORIGINS = 24  # backtest origins per series (the most recent ones)
MIN_TRAIN = 8  # buckets before the first origin
# scored origins (non-empty target buckets) an MAE needs to count: as many as a fully
# observed series needs origins to be backtested at all
MIN_SCORED = MIN_ORIGINS
ARIMA_MAX_SERIES = 20
CONFORMAL_WINDOW = 20  # most recent errors a band is calibrated on
MIN_ERRORS = 10  # past errors needed before a conformal band (and its coverage) counts
# Band checks (backtest targets) below which the pooled coverage is flagged as too few to
# judge: with 20 checks a band that truly covers 80% reads anywhere from about 62% to 98%.
MIN_COVERAGE_CHECKS = 20
# one-step MAEs this close (relative) to the lowest tie with it; the candidate listed
# first wins (see 3. above)
TIE_RTOL = 1e-9
AUTO = "auto"
SHORT = "WindowAverage (short series)"
WINDOW = "WindowAverage"
NAIVE = "Naive"
# refit at every backtest origin, which costs nothing; the others are fitted once
CHEAP = ("Naive", "WindowAverage", "SeasonalNaive")


@dataclass(frozen=True)
class Forecasts:
    future: pd.DataFrame  # unique_id, step, model, forecast, lo_80, hi_80, lo_95, hi_95
    # unique_id, model, step, mae, mase, coverage_80, coverage_95, points, coverage_points
    # (the 80% band's checks), coverage_points_95 (the 95% band's; not in the DuckDB
    # table), chosen
    backtest: pd.DataFrame
    history: (
        pd.DataFrame
    )  # unique_id, t (index of the bucket forecast from), forecast_next, low, high
    skill: dict  # series, judged, beat_naive, median MAE ratio, ... (see _skill, skill_line)


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


def candidates(season: int | None, window: int | None, arima: bool) -> list:
    """The candidate models; `season` / `window` None leave SeasonalNaive / WindowAverage
    out. A season up to MAX_MODEL_SEASON also goes to AutoETS and AutoTheta."""
    from statsforecast.models import (
        AutoARIMA,
        AutoETS,
        AutoTheta,
        Naive,
        SeasonalNaive,
        WindowAverage,
    )

    models = [Naive()]
    if window:
        models.append(WindowAverage(window_size=window))
    fitted_season = season if season and season <= MAX_MODEL_SEASON else 1
    models += [AutoETS(season_length=fitted_season), AutoTheta(season_length=fitted_season)]
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
    """Forecast every series (`{unique_id: values in bucket order}`, NaN for an empty
    bucket, the first bucket not empty) `horizon` buckets ahead.

    `season`: buckets per seasonal cycle (SEASONS[grain]), None for none."""
    require_statsforecast()
    futures, backtests, histories = [], [], []
    by_origins: dict[tuple[int, bool, bool], dict[str, np.ndarray]] = {}
    for uid, y in series.items():
        if len(y) and np.isnan(y[0]):
            raise ValueError(f"series {uid!r} starts with an empty bucket")
        if len(y) < min_points(horizon):
            futures.append(_short_future(uid, _filled(y), window, horizon))
            continue
        origins = min(max_origins, len(y) - MIN_TRAIN - horizon + 1)
        first = _first_fit(len(y), origins, horizon)
        # a candidate joins only where it can forecast every origin
        seasonal = bool(season) and first >= 2 * season
        windowed = first >= window
        by_origins.setdefault((origins, seasonal, windowed), {})[uid] = y
    for (origins, seasonal, windowed), group in by_origins.items():
        models = candidates(
            season if seasonal else None,
            window if windowed else None,
            len(series) <= ARIMA_MAX_SERIES,
        )
        f, b, h = _backtest_and_forecast(group, models, origins, horizon)
        futures.append(f)
        backtests.append(b)
        histories.append(h)
    future = pd.concat(futures, ignore_index=True) if futures else _empty_future()
    backtest = pd.concat(backtests, ignore_index=True) if backtests else pd.DataFrame()
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    skill = {**_skill(backtest, len(series), window), "min_points": min_points(horizon)}
    return Forecasts(future, backtest, history, skill)


def _first_fit(n: int, origins: int, horizon: int) -> int:
    """Buckets before the first backtest origin: what the once-fitted models see."""
    return n - origins - horizon + 1


def _filled(y: np.ndarray) -> np.ndarray:
    """Model input: empty buckets carry the last value forward (the models need a value
    in every bucket; a bucket without rows says nothing new about the index)."""
    return pd.Series(y, dtype=float).ffill().to_numpy(float)


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
    cheap = [m for m in models if repr(m) in CHEAP]
    fitted = [m for m in models if m not in cheap]
    kwargs = {"df": df, "h": h, "n_windows": origins, "step_size": 1}
    out = sf_cls(models=cheap, freq=1, n_jobs=1).cross_validation(**kwargs, refit=True)
    if fitted:
        other = sf_cls(models=fitted, freq=1, n_jobs=1).cross_validation(**kwargs, refit=False)
        out = out.merge(other, on=["unique_id", "ds", "cutoff", "y"])
    out["step"] = out["ds"] - out["cutoff"]
    return out


def _ship(model, y: np.ndarray, first: int, horizon: int) -> np.ndarray:
    """`model`'s forecast of the next `horizon` buckets, made as `_cross_validate` made
    its backtest forecasts, so what ships is what was measured: a cheap model refits on
    the whole series; the others are fitted on the `first` buckets before the first origin
    (AutoARIMA's order included) and take in the rest with `forward`. A full refit here
    could pick another model (another ARIMA order) than the one backtested."""
    if repr(model) in CHEAP:
        return model.forecast(y=y, h=horizon)["mean"]
    return model.new().fit(y=y[:first]).forward(y=y, h=horizon)["mean"]


def _backtest_and_forecast(group, models, origins: int, horizon: int):
    from statsforecast import StatsForecast

    filled = {uid: _filled(y) for uid, y in group.items()}
    df = _frame(filled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from the Auto* searches
        one = _cross_validate(StatsForecast, models, df, 1, origins + horizon - 1)
        many = _cross_validate(StatsForecast, models, df, horizon, origins)
        parts = [
            _one_series(uid, y, filled[uid], models, one, many, origins, horizon)
            for uid, y in group.items()
        ]
    futures, backtests, histories = zip(*parts, strict=True)
    return (
        pd.concat(futures, ignore_index=True),
        pd.concat(backtests, ignore_index=True),
        pd.concat(histories, ignore_index=True),
    )


def _one_series(uid, y, filled, models, one, many, origins: int, horizon: int):
    """One series' shipped forecast, backtest rows and one-step history."""
    names = [repr(m) for m in models]
    observed = ~np.isnan(y)
    first = _first_fit(len(y), origins, horizon)
    cv1 = one[one["unique_id"] == uid].sort_values("cutoff")
    errors1 = {m: _errors(cv1, m, observed) for m in names}
    # a model's failures (no forecast), apart from empty targets (NaN errors too)
    failed = {m: ~np.isfinite(cv1[m].to_numpy(float)) for m in names}
    online = _online_choice(errors1, failed)
    # the shipped choice comes after every origin: a candidate that failed at any is out
    eligible = [m for m in names if not failed[m].any()]
    default = _default(eligible)
    cvh = many[many["unique_id"] == uid]
    # the backtest table's rows per step: step 1 from every one-step origin (cv1, the
    # errors the choice is made on), steps 2.. from the multi-step origins
    by_step = {
        1: cv1,
        **{s: cvh[cvh["step"] == s].sort_values("cutoff") for s in range(2, horizon + 1)},
    }
    # a model ships only when the table's step-1 rows have as many scored origins as an
    # MAE needs (MIN_SCORED): on fewer, no MAE in the table justifies a choice, and the
    # default ships
    scored = np.isfinite(np.vstack([errors1[m] for m in eligible])).all(axis=0)
    enough = int(scored.sum()) >= MIN_SCORED
    best = _pick(errors1, eligible, len(cv1), default) if enough else default
    scale = _naive_scale(y, filled, first)
    forecast = _ship(models[names.index(best)], filled, first, horizon)
    return (
        _future(uid, forecast, best, by_step, observed),
        _metrics(
            uid,
            by_step,
            names,
            best,
            dict(zip(cv1["cutoff"], online, strict=True)),
            observed,
            scale,
        ),
        _history(uid, cv1, online, errors1),
    )


def _errors(cv: pd.DataFrame, model: str, observed: np.ndarray) -> np.ndarray:
    """|forecast - actual| per backtest row, NaN (not scored) where the target bucket was
    empty: its value is only the previous one carried forward, which naive predicts for
    free; or where the model gave no forecast."""
    err = np.abs(cv[model].to_numpy(float) - cv["y"].to_numpy(float))
    return np.where(observed[cv["ds"].to_numpy(int)], err, np.nan)


def _pick(errors: dict[str, np.ndarray], eligible: list[str], k: int, default: str) -> str:
    """The eligible model with the lowest mean error over the scored origins before `k`
    (every eligible model forecast every origin before `k`, so they are compared on the
    same ones: the origins whose target bucket had rows),
    a tie (`TIE_RTOL`) going to the one listed first; `default` before any origin is
    scored. Each mean is taken as `_metrics` takes the table's `mae`: over all the origins
    (k = all), the choice is the lowest step-1 `mae` of the backtest table."""
    past = np.vstack([errors[m][:k] for m in eligible])
    keep = ~np.isnan(past).any(axis=0)
    if not keep.any():
        return default
    maes = [float(errors[m][:k][keep].mean()) for m in eligible]
    lowest = min(maes)
    return next(m for m, v in zip(eligible, maes, strict=True) if v - lowest <= TIE_RTOL * lowest)


def _default(eligible: list[str]) -> str:
    """The choice before any origin is scored: the window average, or naive without one."""
    return WINDOW if WINDOW in eligible else NAIVE


def _online_choice(errors: dict[str, np.ndarray], failed: dict[str, np.ndarray]) -> list[str]:
    """Per origin k, the model `_pick` chooses from the origins before it, among the
    candidates that have not failed (`failed`: no forecast, per origin) up to k: a failure
    at k is known when the forecast is made there (its target is not), and one after k
    is not known yet, so it cannot rule a candidate out at k (that was look-ahead)."""
    n = len(next(iter(errors.values())))
    picks = []
    for k in range(n):
        eligible = [m for m in errors if not failed[m][: k + 1].any()]
        default = _default(eligible)
        picks.append(_pick(errors, eligible, k, default) if eligible else default)
    return picks


def _quantile(errors: np.ndarray, level: int) -> float:
    """Split-conformal quantile of the last CONFORMAL_WINDOW scored |errors| (NaN ones are
    skipped): the ceil((n+1) p)-th smallest (inf when there are too few). Recent errors
    only, because a series' error scale drifts (and early origins' choices are the least
    informed)."""
    errors = errors[~np.isnan(errors)][-CONFORMAL_WINDOW:]
    n = len(errors)
    k = int(np.ceil((n + 1) * level / 100))
    if n < MIN_ERRORS or k > n:
        return np.inf
    return float(np.sort(errors)[k - 1])


def _naive_scale(y: np.ndarray, filled: np.ndarray, first: int) -> float:
    """MASE's denominator: naive's in-sample one-step MAE before the first origin, on
    non-empty target buckets; NaN when there is none, or it is 0."""
    err = np.abs(y[1:first] - filled[: first - 1])
    err = err[~np.isnan(err)]
    return float(err.mean()) if len(err) and err.mean() > 0 else np.nan


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


def _metrics(uid, by_step, names, best, auto_by_cutoff, observed, scale) -> pd.DataFrame:
    """MAE, MASE and online conformal coverage per model and step (`by_step`: the
    backtest rows of each step, in cutoff order), on scored origins only; `auto` is the
    product (its pick per cutoff: `auto_by_cutoff`)."""
    rows = []
    for step, at in by_step.items():
        cutoffs = at["cutoff"].tolist()
        errs = {m: _errors(at, m, observed) for m in names}
        for model in [*names, AUTO]:
            pick = [auto_by_cutoff[c] for c in cutoffs] if model == AUTO else [model] * len(cutoffs)
            err = np.array([errs[m][k] for k, m in enumerate(pick)])
            covered = _coverage(errs, pick, err, step)
            scored = err[~np.isnan(err)]
            mae = float(scored.mean()) if len(scored) >= MIN_SCORED else np.nan
            rows.append(
                {
                    "unique_id": uid,
                    "model": model,
                    "step": step,
                    "mae": mae,
                    "mase": mae / scale,  # NaN when either is unknown
                    "coverage_80": float(np.mean(covered[80])) if covered[80] else np.nan,
                    "coverage_95": float(np.mean(covered[95])) if covered[95] else np.nan,
                    "points": len(scored),
                    "coverage_points": len(covered[80]),
                    "coverage_points_95": len(covered[95]),
                    "chosen": model == best,
                }
            )
    return pd.DataFrame(rows)


def _coverage(errs, pick, err, step: int) -> dict[int, list[bool]]:
    """Per level, whether each scored origin's actual fell inside the band shipped there:
    model m's errors at this step whose targets were known by then."""
    covered: dict[int, list[bool]] = {level: [] for level in LEVELS}
    for k, m in enumerate(pick):
        if np.isnan(err[k]):
            continue  # an empty target bucket: nothing to check
        known = errs[m][: max(0, k - step + 1)]
        for level in LEVELS:
            q = _quantile(known, level)
            if np.isfinite(q):
                covered[level].append(bool(err[k] <= q))
    return covered


def _future(uid, forecast: np.ndarray, best: str, by_step, observed) -> pd.DataFrame:
    rows = []
    for step, f in enumerate(np.asarray(forecast, float), start=1):
        err = _errors(by_step[step], best, observed)
        out = {"unique_id": uid, "step": step, "model": best, "forecast": float(f)}
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


def _skill(backtest: pd.DataFrame, n_series: int, window: int) -> dict:
    """How the product's one-step forecasts ("auto") compare with naive and the window
    average, per series with enough scored origins to judge ("judged"). Unknown figures
    are None (this dict goes out as JSON, where NaN is not allowed)."""
    if backtest.empty:
        return {"series": n_series, "backtested": 0}
    one = backtest[backtest["step"] == 1].pivot(index="unique_id", columns="model", values="mae")
    judged = one[one[AUTO].notna() & one[NAIVE].notna()]
    naive, auto = judged[NAIVE], judged[AUTO]
    # series whose first backtest fit saw fewer than --window buckets have no window average
    window_mae = judged[WINDOW] if WINDOW in judged else pd.Series(np.nan, index=judged.index)
    with_window = window_mae.notna()
    ratio = (auto / naive).replace([np.inf, -np.inf], np.nan).dropna()
    auto_rows = backtest[backtest["model"] == AUTO]
    bands = {}  # coverage_80, coverage_checks_80, coverage_95, coverage_checks_95
    for level in LEVELS:
        bands[f"coverage_{level}"], bands[f"coverage_checks_{level}"] = _pooled(auto_rows, level)
    return {
        "series": n_series,
        "backtested": len(one),
        "judged": len(judged),
        "beat_naive": int((auto < naive).sum()),
        "with_window": int(with_window.sum()),
        "beat_window": int((auto[with_window] <= window_mae[with_window]).sum()),
        "no_window": len(one) - backtest.loc[backtest["model"] == WINDOW, "unique_id"].nunique(),
        "window": window,
        "mae_ratio_naive": float(ratio.median()) if len(ratio) else None,
        **bands,
    }


_CHECKS = {80: "coverage_points", 95: "coverage_points_95"}  # each band's own checks


def _pooled(rows: pd.DataFrame, level: int) -> tuple[float | None, int]:
    """The `level`% band's coverage over all series and steps, each row weighted by that
    band's own checks, and how many checks that is (None, 0 before any)."""
    ok = rows[f"coverage_{level}"].notna()
    rate, checks = rows[f"coverage_{level}"][ok], rows[_CHECKS[level]][ok]
    n = int(checks.sum())
    return (float((rate * checks).sum() / n) if n else None), n


def skill_line(skill: dict) -> str:
    """The report's one line on whether to trust the forecasts."""
    if not skill:
        return "forecasts: not computed (--horizon 0)"
    if not skill.get("backtested"):
        return (
            f"forecasts: no series has {skill['min_points']} buckets yet, so none was backtested; "
            "the forecast is the window average and its skill is unknown"
        )
    if not skill["judged"]:
        return (
            f"forecasts: skill unknown; none of the {skill['backtested']} backtested series has "
            f"{MIN_SCORED} non-empty buckets among its backtest targets"
        )
    return f"forecasts {_verdict(skill['mae_ratio_naive'])}; {_counts(skill)}; {_bands(skill)}"


def _verdict(ratio: float | None) -> str:
    if ratio is None:  # naive was exact on every judged series
        return "cannot be compared with naive (its one-step MAE is 0)"
    better = (1 - ratio) * 100
    if better > 0:
        return f"beat naive by {better:.0f}% (median one-step MAE ratio)"
    return f"do not beat naive (median one-step MAE {-better:.0f}% worse)"


def _counts(skill: dict) -> str:
    out = f"better than naive on {skill['beat_naive']} of {skill['judged']} judged series"
    unjudged = skill["backtested"] - skill["judged"]
    if unjudged:
        out += (
            f" ({unjudged} more backtested with fewer than {MIN_SCORED} non-empty target "
            "buckets: skill unknown)"
        )
    if skill["with_window"]:
        out += (
            f", at or below the window average on {skill['beat_window']} of {skill['with_window']}"
        )
    if skill["no_window"]:
        out += (
            f"; the window average was left out on {skill['no_window']} series (--window "
            f"{skill['window']} is longer than the buckets before their first backtest origin)"
        )
    return out


def _bands(skill: dict) -> str:
    known = {lv: skill[f"coverage_{lv}"] for lv in LEVELS if skill[f"coverage_{lv}"] is not None}
    if not known:
        return f"band coverage not measured yet (needs {MIN_ERRORS} past errors before an origin)"
    checks = {lv: skill.get(f"coverage_checks_{lv}") for lv in known}
    rates = " and ".join(
        f"{rate:.0%}"
        + (f" of {_n(checks[lv], 'check')}" if checks[lv] is not None else "")
        + f" ({lv}% band)"
        for lv, rate in known.items()
    )
    out = f"bands covered {rates} out of sample"
    # one check per series gives each series 0% or 100%
    few = [lv for lv, n in checks.items() if n is not None and n < MIN_COVERAGE_CHECKS]
    if few:
        which = " and ".join(f"{lv}%" for lv in few)
        out += (
            f"; too few checks to judge the {which} band{'s' if len(few) > 1 else ''} "
            f"(fewer than {MIN_COVERAGE_CHECKS})"
        )
    for lv in sorted(set(LEVELS) - set(known)):
        out += f"; the {lv}% band not measured yet (needs {_errors_needed(lv)} past errors)"
    return out


def _n(count: int, noun: str) -> str:
    """`count` `noun`s, singular for 1."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _errors_needed(level: int) -> int:
    """Past errors a `level`% band needs (`_quantile`)."""
    n = MIN_ERRORS
    while np.ceil((n + 1) * level / 100) > n:
        n += 1
    return n
