"""Trend forecasts: statsforecast candidates, rolling-origin backtest, online choice,
split-conformal bands, and the tables `marketpulse trends` writes from them."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest
from trends_fixtures import create_results_tables, insert_scores, register_model

from marketpulse.trends import TrendsConfig, format_report, run
from marketpulse.trends.forecast import (
    AUTO,
    MIN_SCORED,
    SEASONS,
    SHORT,
    candidates,
    forecast_series,
    min_points,
    skill_line,
)
from marketpulse.trends.report import summary

pytest.importorskip("statsforecast")


def _backtest(result, model, step=1):
    bt = result.backtest
    return bt[(bt["model"] == model) & (bt["step"] == step)].set_index("unique_id")


def test_naive_backtest_error_is_the_mean_one_step_change():
    rng = np.random.default_rng(1)
    y = np.cumsum(rng.normal(0, 0.05, 60))
    result = forecast_series({"s": y}, None, 4, 3, max_origins=20)
    naive = _backtest(result, "Naive").loc["s"]
    # 20 origins at step 3 end 3 buckets before the end; step 1 uses the same cutoffs
    cutoffs = np.arange(60 - 3 - 20, 60 - 3)
    assert naive["points"] == 20
    assert naive["mae"] == pytest.approx(np.mean(np.abs(y[cutoffs + 1] - y[cutoffs])))
    # MASE scales by naive's in-sample one-step error before the first origin
    scale = np.mean(np.abs(np.diff(y[: cutoffs[0] + 1])))
    assert naive["mase"] == pytest.approx(naive["mae"] / scale)


def test_a_trend_is_followed_and_a_level_is_averaged():
    rng = np.random.default_rng(2)
    t = np.arange(80)
    trend = 0.01 * t - 0.4 + rng.normal(0, 0.02, 80)
    level = 0.3 + rng.normal(0, 0.1, 80)
    result = forecast_series({"trend": trend, "level": level}, None, 4, 4)
    auto, window, naive = (_backtest(result, m)["mae"] for m in (AUTO, "WindowAverage", "Naive"))
    assert auto["trend"] < window["trend"]  # the window average lags a trend
    assert auto["level"] < naive["level"]  # naive chases noise around a level
    chosen = result.backtest[result.backtest["chosen"] & (result.backtest["step"] == 1)]
    assert dict(zip(chosen["unique_id"], chosen["model"], strict=True))["trend"] != "WindowAverage"
    future = result.future[result.future["unique_id"] == "trend"].sort_values("step")
    assert list(future["step"]) == [1, 2, 3, 4]
    assert future["forecast"].is_monotonic_increasing  # it keeps rising
    assert (future["lo_95"] <= future["lo_80"]).all() and (future["hi_80"] <= future["hi_95"]).all()


def test_conformal_bands_cover_near_their_level_out_of_sample():
    rng = np.random.default_rng(3)
    series = {f"s{i}": 0.2 + rng.normal(0, 0.1, 150) for i in range(6)}
    result = forecast_series(series, None, 4, 1, max_origins=120)
    auto = _backtest(result, AUTO)
    assert auto["coverage_80"].mean() == pytest.approx(0.80, abs=0.05)
    assert auto["coverage_95"].mean() == pytest.approx(0.95, abs=0.04)


def test_short_series_get_the_window_average_and_say_so():
    y = np.array([0.1, 0.5, 0.3, 0.2])
    result = forecast_series({"short": y}, 52, 3, 2)
    assert len(y) < min_points(2) and result.backtest.empty and result.history.empty
    assert set(result.future["model"]) == {SHORT}
    assert result.future["forecast"].tolist() == pytest.approx([1 / 3, 1 / 3])
    assert result.future["lo_80"].isna().all()
    assert result.skill == {"series": 1, "backtested": 0, "min_points": min_points(2)}


def test_forecasts_and_bands_stay_in_the_index_range():
    y = np.linspace(0.2, 0.98, 40)  # heading past +1
    future = forecast_series({"s": y}, None, 4, 4).future
    assert future["forecast"].max() <= 1 and future["hi_95"].max() <= 1


@pytest.fixture
def weekly_db(tmp_path):
    """Two brands over 30 weeks, 20 posts a week: A improves steadily, B holds level."""
    path = tmp_path / "market.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id BIGINT, brand VARCHAR, posted_at TIMESTAMP, text VARCHAR)")
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "v1", datetime(2024, 9, 1))
    rng = np.random.default_rng(4)
    posts, scores = [], []
    for brand in "AB":
        for week in range(30):
            p_pos = 0.2 + 0.02 * week if brand == "A" else 0.45
            for k in range(20):
                u = rng.random()
                label = "positive" if u < p_pos else ("negative" if u > 0.75 else "neutral")
                posts.append(
                    [
                        len(posts) + 1,
                        brand,
                        datetime(2024, 1, 1) + timedelta(weeks=week, hours=k),
                        "x",
                    ]
                )
                scores.append((len(posts), label))
    con.executemany("INSERT INTO posts VALUES (?, ?, ?, ?)", posts)
    insert_scores(con, "v1", scores)
    con.close()
    return path


def test_trends_writes_forecast_and_backtest_tables(weekly_db):
    cfg = TrendsConfig(
        db=weekly_db, source="posts", id_col="id", time_col="posted_at", by=("brand",), horizon=3
    )
    result = run(cfg)
    assert (result.forecast_table, result.backtest_table) == (
        "forecast_posts_week",
        "forecast_backtest_posts_week",
    )
    con = duckdb.connect(str(weekly_db), read_only=True)
    future = con.execute(
        "SELECT brand, bucket, step, model, forecast, lo_95, hi_95 FROM forecast_posts_week "
        "ORDER BY brand, step"
    ).fetchall()
    last = datetime(2024, 1, 1).date() + timedelta(weeks=29)
    assert [(b, d, s) for b, d, s, *_ in future] == [
        (b, last + timedelta(weeks=s), s) for b in "AB" for s in (1, 2, 3)
    ]
    assert all(lo <= f <= hi for *_, f, lo, hi in future)
    chosen = con.execute(
        "SELECT brand, step, count(*) FILTER (WHERE chosen), count(*) FILTER (WHERE model = 'auto') "
        "FROM forecast_backtest_posts_week GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert chosen == [(b, s, 1, 1) for b in "AB" for s in (1, 2, 3)]
    # the trend table's latest forecast_next is the forecast table's first step
    latest = con.execute(
        "SELECT t.brand, t.forecast_next, f.forecast FROM trend_posts_week AS t "
        "JOIN forecast_posts_week AS f ON f.brand = t.brand AND f.step = 1 "
        f"WHERE t.bucket = DATE '{last}'"
    ).fetchall()
    assert all(a == pytest.approx(b) for _, a, b in latest) and len(latest) == 2
    # earlier buckets hold the one-step forecast made there: compare with what followed
    history = con.execute(
        f"SELECT count(forecast_next), count(*) FROM trend_posts_week WHERE bucket < DATE '{last}'"
    ).fetchone()
    con.close()
    assert 0 < history[0] < history[1]
    assert "forecasts" in format_report(result) and "backtest: forecast_backtest_posts_week" in (
        format_report(result)
    )
    assert result.skill["backtested"] == 2


def test_a_candidate_that_cannot_forecast_is_never_chosen():
    """36 monthly buckets: the first backtest fit sees fewer than two seasons, so
    SeasonalNaive is left out; and a model's missing forecasts count as infinitely wrong."""
    rng = np.random.default_rng(5)
    y = 0.1 * np.sin(np.arange(36) * 2 * np.pi / 12) + rng.normal(0, 0.05, 36)
    result = forecast_series({"m": y}, 12, 8, 4)
    assert not result.backtest["model"].str.startswith("SeasonalNaive").any()
    assert np.isfinite(_backtest(result, AUTO)["mae"]).all()
    assert result.history["forecast_next"].notna().all()


def test_a_daily_weekday_pattern_is_fitted_with_its_season():
    """A daily index with a weekday/weekend cycle: AutoETS and AutoTheta are told the
    7-day season (statsforecast's default, season_length=1, is never seasonal, and then
    both did worse than seasonal naive here), so they beat seasonal naive one step ahead,
    and the shipped forecast follows the cycle."""
    rng = np.random.default_rng(7)
    t = np.arange(124)
    cycle = 0.1 + 0.25 * (t % 7 >= 5) + 0.1 * np.sin(2 * np.pi * t / 7)
    series = {f"s{i}": cycle[:120] + rng.normal(0, 0.06, 120) for i in range(2)}
    result = forecast_series(series, SEASONS["day"], 4, 4)
    ets, theta, snaive = (
        _backtest(result, m)["mae"] for m in ("AutoETS", "AutoTheta", "SeasonalNaive")
    )
    assert (ets < 0.85 * snaive).all() and (theta < 0.85 * snaive).all()
    for uid in series:
        future = result.future[result.future["unique_id"] == uid].sort_values("step")
        assert np.abs(future["forecast"].to_numpy() - cycle[120:]).max() < 0.05
    # the season goes to ETS and Theta up to 24 buckets: none at 52 weeks (statsforecast's
    # ETS has no seasonal form beyond 24), nor to AutoARIMA (its cost)
    for season, fitted in ((7, 7), (12, 12), (52, 1), (None, 1)):
        lengths = {repr(m): getattr(m, "season_length", None) for m in candidates(season, 4, True)}
        assert lengths["AutoETS"] == lengths["AutoTheta"] == fitted
        assert lengths["AutoARIMA"] == 1


def test_horizon_zero_skips_forecasts_and_the_report_still_reads(weekly_db):
    result = run(
        TrendsConfig(
            db=weekly_db,
            source="posts",
            id_col="id",
            time_col="posted_at",
            by=("brand",),
            horizon=0,
        )
    )
    report = format_report(result)
    assert result.forecast_table == "" and "not computed (--horizon 0)" in report
    assert "backtest: ;" not in report and "()" not in report  # no empty table names
    with duckdb.connect(str(weekly_db), read_only=True) as con:
        written = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    assert result.trend_table in written and not {t for t in written if "forecast" in t}


def _posts_db(path, weeks: int, every: dict[str, int]):
    """Brands posting 20 times in every `every[brand]`-th week of `weeks`, labels drawn
    around an index that wanders (so no model is exact)."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id BIGINT, brand VARCHAR, posted_at TIMESTAMP, text VARCHAR)")
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "v1", datetime(2024, 9, 1))
    rng = np.random.default_rng(6)
    posts, scores = [], []
    for brand, k in every.items():
        for week in range(0, weeks, k):
            p_pos = 0.35 + 0.15 * np.sin(week / 4)
            for hour in range(20):
                u = rng.random()
                label = "positive" if u < p_pos else ("negative" if u > 0.7 else "neutral")
                at = datetime(2024, 1, 1) + timedelta(weeks=week, hours=hour)
                posts.append([len(posts) + 1, brand, at, "x"])
                scores.append((len(posts), label))
    con.executemany("INSERT INTO posts VALUES (?, ?, ?, ?)", posts)
    insert_scores(con, "v1", scores)
    con.close()
    return path


def _cfg(db, **kw):
    return TrendsConfig(
        db=db, source="posts", id_col="id", time_col="posted_at", by=("brand",), **kw
    )


def test_backtest_scores_only_buckets_that_had_rows(tmp_path):
    """An empty week carries the last index forward as model input, where naive is exact
    for free: it must not count as a target (MAE, coverage), and a brand with too few
    non-empty targets gets no MAE at all."""
    db = _posts_db(tmp_path / "sparse.duckdb", 60, {"A": 1, "S": 2, "T": 3})
    result = run(_cfg(db, horizon=4))
    with duckdb.connect(str(db), read_only=True) as con:
        index = {
            b: np.array([np.nan if v is None else v for (v,) in rows], float)
            for b in "AST"
            for rows in [
                con.execute(
                    "SELECT net_index FROM trend_posts_week WHERE brand = ? ORDER BY bucket", [b]
                ).fetchall()
            ]
        }
        rows = con.execute(
            "SELECT brand, model, mae, points, coverage_points FROM forecast_backtest_posts_week "
            "WHERE step = 1"
        ).fetchall()
    naive = {b: (mae, points) for b, m, mae, points, _ in rows if m == "Naive"}
    # 24 origins; the last training bucket of the first is 60 - 24 - 4 = 32
    cutoffs = np.arange(32, 56)
    for brand in "AS":
        y = index[brand]
        filled = pd.Series(y).ffill().to_numpy()
        scored = [abs(y[c + 1] - filled[c]) for c in cutoffs if not np.isnan(y[c + 1])]
        assert naive[brand] == (pytest.approx(np.mean(scored)), len(scored))
    assert naive["S"][1] == 12 and naive["T"][1] == 8 < MIN_SCORED
    assert all(mae is None for b, _, mae, *_ in rows if b == "T")  # too few to judge
    assert all(cov <= points for *_, points, cov in rows)
    assert (result.skill["backtested"], result.skill["judged"]) == (3, 2)
    assert "1 more backtested with fewer than 10 non-empty target buckets" in format_report(result)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_window_longer_than_the_first_fit_is_left_out_and_said(weekly_db):
    """30 weeks, horizon 3: the first backtest fit sees 8 weeks, too few for a 12-week
    average, which therefore has no forecast at the first origins."""
    result = run(_cfg(weekly_db, horizon=3, window=12))
    with duckdb.connect(str(weekly_db), read_only=True) as con:
        models = {
            r[0] for r in con.execute("SELECT model FROM forecast_backtest_posts_week").fetchall()
        }
        maes = [
            r[0] for r in con.execute("SELECT mae FROM forecast_backtest_posts_week").fetchall()
        ]
    assert "WindowAverage" not in models and AUTO in models
    assert all(math.isfinite(m) for m in maes)
    assert result.skill["no_window"] == 2 and result.skill["mae_ratio_naive"] is not None
    report = format_report(result)
    assert "window average was left out on 2 series (--window 12 is longer" in report
    assert "nan" not in report and "inf" not in report


def test_the_shipped_forecast_is_the_backtested_model():
    """The fitted candidates are backtested as one fit on the buckets before the first
    origin, then only updated (refit=False). The forecast must come from that same fit: a
    refit on all the data picks another ARIMA order here (a mean-reverting stretch after a
    flat one), which the backtest never measured."""
    rng = np.random.default_rng(0)
    e = rng.normal(0, 0.15, 40)
    y = np.empty(40)
    y[:12] = 0.1 + 0.02 * rng.normal(size=12)
    for t in range(12, 40):
        y[t] = 0.1 - 0.8 * (y[t - 1] - 0.1) + e[t]
    result = forecast_series({"s": y}, None, 4, 4)
    chosen = set(result.future["model"])
    assert chosen == {"AutoARIMA"}
    model = next(m for m in candidates(None, 4, True) if repr(m) in chosen)
    first = 40 - 24 - 4 + 1  # buckets before the first of the 24 origins
    backtested = model.new().fit(y=y[:first]).forward(y=y, h=4)["mean"]
    refit = model.new().forecast(y=y, h=4)["mean"]
    assert np.abs(backtested - refit).max() > 0.05  # the two really differ
    assert result.future.sort_values("step")["forecast"].to_numpy() == pytest.approx(backtested)


def test_unknown_figures_are_none_so_the_json_summary_is_valid(weekly_db):
    """30 weeks, horizon 4: 19 origins, and the 95% band needs 19 past errors, so its
    coverage is unknown: None, not NaN (which is not JSON)."""
    result = run(_cfg(weekly_db, horizon=4))
    assert result.skill["coverage_95"] is None and result.skill["coverage_80"] is not None
    json.dumps(summary(result), allow_nan=False)
    assert "the 95% band not measured yet (needs 19 past errors)" in format_report(result)
    unknown = {**result.skill, "mae_ratio_naive": None, "coverage_80": None}
    assert "nan" not in skill_line(unknown)


def test_coverage_says_how_many_checks_it_rests_on_and_flags_too_few(weekly_db):
    """With one band check per series, each series' coverage is 0% or 100%: the pooled
    rate over a handful of them is reported as too few to judge."""
    result = run(_cfg(weekly_db, horizon=4))
    checks = result.skill["coverage_checks"]
    with duckdb.connect(str(weekly_db), read_only=True) as con:
        (want,) = con.execute(
            f"SELECT sum(coverage_points) FROM {result.backtest_table} "
            "WHERE model = 'auto' AND coverage_80 IS NOT NULL"
        ).fetchone()
    assert checks == want > 0
    line = skill_line(result.skill)
    assert f"out of sample on {checks:,} check(s)" in line
    assert ("too few to judge the bands" in line) == (checks < 20)
    few = skill_line({**result.skill, "coverage_checks": 3})
    assert "on 3 check(s), too few to judge the bands (fewer than 20)" in few


def test_too_few_scored_origins_ship_the_window_average():
    """Most buckets empty: fewer than MIN_SCORED one-step targets have rows, so no MAE in
    the backtest table could justify a model; the window average ships."""
    rng = np.random.default_rng(5)
    y = np.full(40, np.nan)
    y[::6] = rng.normal(0.2, 0.3, size=len(y[::6]))  # 7 buckets with rows
    result = forecast_series({"s": y}, None, 4, 4)
    assert set(result.future["model"]) == {"WindowAverage"}
    chosen = result.backtest[result.backtest["chosen"]]
    assert set(chosen["model"]) == {"WindowAverage"}
    one = result.backtest[(result.backtest["step"] == 1) & (result.backtest["model"] != "auto")]
    assert one["mae"].isna().all()  # nothing the table shows could have chosen otherwise


def test_the_scored_origins_counted_are_the_backtest_tables_own():
    """The one-step history has horizon - 1 origins more than the table's step-1 rows: 10
    scored there while the table showed 9 (and no MAE) shipped a model (review finding)."""
    from marketpulse.trends.forecast import min_points

    n = min_points(4)
    rng = np.random.default_rng(0)
    y = np.linspace(-0.8, 0.8, n) + rng.normal(0, 0.05, n)
    y[n - 4 - 10 + 1] = np.nan
    result = forecast_series({"s": y}, None, 4, 4)
    one = result.backtest[(result.backtest["step"] == 1) & (result.backtest["model"] != "auto")]
    assert one["mae"].isna().all() and (one["points"] == 9).all()
    assert set(result.future["model"]) == {"WindowAverage"}
