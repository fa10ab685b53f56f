"""Trend forecasts: statsforecast candidates, rolling-origin backtest, online choice,
split-conformal bands, and the tables `marketpulse trends` writes from them."""

from __future__ import annotations

import json
import math
import random
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
    TIE_RTOL,
    _one_series,
    _pick,
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
    # 20 origins at step 3 end 3 buckets before the end; step 1 starts at the same cutoff
    # and runs to the last bucket whose next one is known (22 origins)
    cutoffs = np.arange(60 - 3 - 20, 60 - 1)
    assert naive["points"] == 22
    assert _backtest(result, "Naive", step=3).loc["s"]["points"] == 20
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


def _posts_db(path, weeks: int, every: dict[str, int], stop: dict[str, int] | None = None):
    """Brands posting 20 times in every `every[brand]`-th week of `weeks` (before week
    `stop[brand]`, when given), labels drawn around an index that wanders (so no model is
    exact)."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id BIGINT, brand VARCHAR, posted_at TIMESTAMP, text VARCHAR)")
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "v1", datetime(2024, 9, 1))
    rng = np.random.default_rng(6)
    posts, scores = [], []
    for brand, k in every.items():
        for week in range(0, (stop or {}).get(brand, weeks), k):
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
    # 24 origins; the last training bucket of the first is 60 - 24 - 4 = 32; one step
    # ahead, every later bucket but the last is an origin too
    cutoffs = np.arange(32, 59)
    for brand in "AS":
        y = index[brand]
        filled = pd.Series(y).ffill().to_numpy()
        scored = [abs(y[c + 1] - filled[c]) for c in cutoffs if not np.isnan(y[c + 1])]
        assert naive[brand] == (pytest.approx(np.mean(scored)), len(scored))
    assert naive["S"][1] == 13 and naive["T"][1] == 9 < MIN_SCORED
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


def test_unknown_figures_are_none_so_the_json_summary_is_valid(tmp_path):
    """26 weeks, horizon 4: 18 one-step origins, and the 95% band needs 19 past errors,
    so its coverage is unknown: None, not NaN (which is not JSON)."""
    db = _posts_db(tmp_path / "short.duckdb", 26, {"A": 1, "B": 1})
    result = run(_cfg(db, horizon=4))
    assert result.skill["coverage_95"] is None and result.skill["coverage_80"] is not None
    assert result.skill["coverage_checks_95"] == 0
    json.dumps(summary(result), allow_nan=False)
    assert "the 95% band not measured yet (needs 19 past errors)" in format_report(result)
    unknown = {**result.skill, "mae_ratio_naive": None, "coverage_80": None}
    assert "nan" not in skill_line(unknown)


def test_each_band_is_pooled_and_counted_on_its_own_checks(weekly_db):
    """The 95% band needs 19 past errors, the 80% band 10: it is checked less often, so
    its pooled coverage is weighted by its own checks, the report gives each band's count,
    and a band with too few checks is flagged on its own (user test: "covered 79% (80%)
    and 100% (95%) ... on 100 check(s)", 100 being the 80% band's count; the 95% band's
    was 28). 30 weeks, horizon 4, every week with rows: 22 one-step origins, so 12 checks
    of the 80% band at step 1 and 3 of the 95% band, and then 19 origins at steps 2-4
    (8, 7, 6 checks of the 80% band; none of the 95% band)."""
    result = run(_cfg(weekly_db, horizon=4))
    skill = result.skill
    with duckdb.connect(str(weekly_db), read_only=True) as con:
        rows = con.execute(
            f"SELECT step, coverage_80, coverage_95, points, coverage_points FROM "
            f"{result.backtest_table} WHERE model = 'auto'"
        ).fetchall()
    assert all(points == n for step, *_, points, _ in rows for n in [22 if step == 1 else 19])
    # every bucket has rows, so every origin is scored: the 95% band, needing 9 more past
    # errors than the 80% band, has 9 fewer checks per row
    checks95 = {step: max(0, cp - 9) for step, *_, cp in rows}
    assert skill["coverage_checks_80"] == sum(cp for *_, cp in rows) == 2 * (12 + 8 + 7 + 6)
    assert skill["coverage_checks_95"] == sum(max(0, cp - 9) for *_, cp in rows) == 2 * 3
    assert checks95 == {1: 3, 2: 0, 3: 0, 4: 0}
    want95 = sum(c95 * max(0, cp - 9) for _, _, c95, _, cp in rows if c95 is not None) / 6
    assert skill["coverage_95"] == pytest.approx(want95)
    want80 = sum(c80 * cp for _, c80, _, _, cp in rows) / skill["coverage_checks_80"]
    assert skill["coverage_80"] == pytest.approx(want80)
    line = skill_line(skill)
    assert f"% of 66 checks (80% band) and {skill['coverage_95']:.0%} of 6 checks (95% band)" in (
        line
    )
    # 6 checks of the 95% band are too few to judge it; the 80% band's 66 are not
    assert "; too few checks to judge the 95% band (fewer than 20)" in line
    assert "judge the 80%" not in line
    few = skill_line({**skill, "coverage_checks_80": 3})
    assert "of 3 checks (80% band)" in few
    assert "too few checks to judge the 80% and 95% bands (fewer than 20)" in few
    one = skill_line({**skill, "coverage_checks_95": 1})
    assert "of 1 check (95% band)" in one


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
    """A model ships only on as many scored one-step origins as the backtest table's
    step-1 rows show (an MAE needs MIN_SCORED): here 13 one-step origins, 4 of their
    targets empty, so 9 scored, no MAE in the table, and the window average ships."""
    n = min_points(4)
    rng = np.random.default_rng(0)
    y = np.linspace(-0.8, 0.8, n) + rng.normal(0, 0.05, n)
    first = n - 4 - 10 + 1  # the first one-step target: 13 of them, to the last bucket
    y[[first, first + 3, first + 6, first + 9]] = np.nan
    result = forecast_series({"s": y}, None, 4, 4)
    one = result.backtest[(result.backtest["step"] == 1) & (result.backtest["model"] != "auto")]
    assert one["mae"].isna().all() and (one["points"] == 9).all()
    assert set(result.future["model"]) == {"WindowAverage"}
    # one more scored target: the table shows MAEs, and the lowest ships
    y[first + 9] = 0.5
    result = forecast_series({"s": y}, None, 4, 4)
    bt = result.backtest
    one = bt[(bt["step"] == 1) & (bt["model"] != AUTO)]
    assert (one["points"] == 10).all() and one["mae"].notna().all()
    assert set(result.future["model"]) == {one.loc[one["mae"].idxmin(), "model"]}


def _daily_db(path):
    """The user test's database: two brands posting 20 times a day for 60 days (A at 50%
    positive / 30% negative, with a bad day 45; B at 40% / 40%)."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id BIGINT, brand VARCHAR, posted_at TIMESTAMP, text VARCHAR)")
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "v1", datetime(2030, 1, 1))
    rng = random.Random(1)
    posts, scores = [], []
    for brand, p_pos, p_neg in (("A", 0.5, 0.3), ("B", 0.4, 0.4)):
        for day in range(60):
            for k in range(20):
                u = rng.random()
                if brand == "A" and day == 45:
                    label = "negative" if u < 0.8 else "positive"
                else:
                    label = (
                        "positive"
                        if u < p_pos
                        else ("negative" if u < p_pos + p_neg else "neutral")
                    )
                    rng.randint(0, 30), rng.randint(0, 30)  # the user test's words
                at = datetime(2024, 3, 4) + timedelta(days=day, minutes=37 * k)
                posts.append([len(posts) + 1, brand, at, "x"])
                scores.append((len(posts), label))
    con.executemany("INSERT INTO posts VALUES (?, ?, ?, ?)", posts)
    insert_scores(con, "v1", scores)
    con.close()
    return path


def test_the_chosen_model_is_the_lowest_step_one_mae_in_the_backtest_table(tmp_path):
    """User test: brand A's `chosen` was AutoTheta at a step-1 `mae` of 0.1831 while
    AutoETS and AutoARIMA showed 0.1754: the choice used 27 one-step origins, the table's
    step-1 rows only the 24 multi-step ones. The step-1 rows now hold every one-step
    origin (the 3 most recent too), and the choice is their lowest `mae`."""
    db = _daily_db(tmp_path / "daily.duckdb")
    result = run(_cfg(db, grain="day", horizon=4))
    order = [repr(m) for m in candidates(SEASONS["day"], 8, True)]
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            f"SELECT brand, model, mae, points, coverage_points, chosen FROM "
            f"{result.backtest_table} WHERE step = 1 AND model <> 'auto'"
        ).fetchall()
        shipped = dict(
            con.execute(f"SELECT DISTINCT brand, model FROM {result.forecast_table}").fetchall()
        )
    for brand in "AB":
        mine = [r for r in rows if r[0] == brand]
        # 24 origins at step 4, and one step ahead from those and the 3 later buckets; all
        # targets have rows; the 80% band's checks start after 10 errors
        assert {(points, cp) for *_, points, cp, _ in mine} == {(27, 17)}
        (chosen,) = [model for _, model, *_, c in mine if c]
        lowest = min(mae for _, _, mae, *_ in mine)
        tied = [
            m
            for m in order
            for _, model, mae, *_ in mine
            if model == m and mae - lowest <= TIE_RTOL * lowest
        ]
        assert chosen == tied[0] == shipped[brand]
    assert shipped["A"] == "AutoTheta"


def test_a_tie_goes_to_the_candidate_listed_first():
    """MAEs a rounding apart (the same errors summed another way) are a tie: the candidate
    listed first wins, not whichever rounding came out lower."""
    base = np.array([0.1, 0.3, 0.2, 0.7, 0.05, 0.4, 0.25, 0.15, 0.35, 0.1, 0.2])
    errors = {"AutoETS": base, "AutoTheta": base * (1 - 1e-15), "Naive": base + 0.01}
    assert _pick(errors, ["Naive", "AutoETS", "AutoTheta"], len(base), "Naive") == "AutoETS"
    assert _pick(errors, ["Naive", "AutoTheta", "AutoETS"], len(base), "Naive") == "AutoTheta"
    clearly = {**errors, "AutoTheta": base * 0.999}
    assert _pick(clearly, ["Naive", "AutoETS", "AutoTheta"], len(base), "Naive") == "AutoTheta"


def test_a_failure_at_a_late_origin_does_not_rule_a_candidate_out_earlier():
    """AutoETS forecasts every one-step origin almost exactly but fails (no forecast) at
    the last one. The online choice ("auto") at an origin knows only the failures up to
    it: AutoETS is chosen from the second origin until the one it fails at (ruling it out
    everywhere for that one failure was look-ahead, and made "auto" naive's), and then
    another candidate forecasts. The shipped choice, after every origin, leaves it out."""
    models = candidates(None, None, False)  # Naive, AutoETS, AutoTheta
    rng = np.random.default_rng(3)
    y = np.clip(np.cumsum(rng.normal(0, 0.05, 40)), -1, 1)
    origins, horizon = 24, 1
    cutoffs = np.arange(len(y) - origins - 1, len(y) - 1)  # the one-step origins
    one = pd.DataFrame(
        {
            "unique_id": "s",
            "ds": cutoffs + 1,
            "cutoff": cutoffs,
            "y": y[cutoffs + 1],
            "Naive": y[cutoffs],
            "AutoETS": y[cutoffs + 1] + 0.001,
            "AutoTheta": y[cutoffs] + 0.05,
        }
    )
    one.loc[origins - 1, "AutoETS"] = np.nan  # fails at the last origin only
    one["step"] = one["ds"] - one["cutoff"]
    many = one.iloc[:0]  # horizon 1: no steps 2..
    future, backtest, history = _one_series("s", y, y, models, one, many, origins, horizon)
    forecast_next = history["forecast_next"].to_numpy()
    # the first origin has nothing scored before it: the default (naive, no window)
    assert forecast_next[0] == one["Naive"].iloc[0]
    np.testing.assert_array_equal(forecast_next[1:-1], one["AutoETS"].to_numpy()[1:-1])
    assert forecast_next[-1] == one["Naive"].iloc[-1]  # AutoETS gave none there
    auto = backtest[(backtest["model"] == AUTO) & (backtest["step"] == 1)]
    naive = backtest[(backtest["model"] == "Naive") & (backtest["step"] == 1)]
    assert int(auto["points"].iloc[0]) == origins  # every origin forecast and scored
    assert float(auto["mae"].iloc[0]) < float(naive["mae"].iloc[0]) / 2
    assert future["model"].tolist() == ["Naive"]
    assert bool(backtest.loc[backtest["model"] == "Naive", "chosen"].all())


def test_a_group_that_stopped_posting_is_named_with_its_stale_forecast(tmp_path):
    """Z stopped 11 weeks before the latest bucket (more than --window 8): its forecast
    is built on its last index carried forward, and the report says so; Y stopped 8 weeks before
    (not more than --window) and is not named."""
    db = _posts_db(tmp_path / "stale.duckdb", 40, {"A": 1, "Y": 1, "Z": 1}, stop={"Y": 32, "Z": 29})
    result = run(_cfg(db, horizon=4))
    assert result.skill["stale"] == [
        {"group": {"brand": "Z"}, "last_bucket": "2024-07-15", "buckets_since": 11}
    ]
    assert (
        json.loads(json.dumps(summary(result)))["forecast_skill"]["stale"] == result.skill["stale"]
    )
    report = format_report(result)
    assert (
        "note: no rows for more than --window (8 weeks) before the latest bucket: Z (last "
        "rows 2024-07-15, 11 weeks before the latest bucket); the forecast there is built on "
        "that last value carried forward, so read it with care"
    ) in report
    assert "Y (last rows" not in report


def test_one_group_reads_as_one_group(tmp_path):
    db = _posts_db(tmp_path / "one.duckdb", 12, {"A": 1})
    report = format_report(run(_cfg(db, horizon=0)))
    assert "(12 week buckets x 1 group)" in report
