"""Trend math on a hand-made scores table with answers worked out by hand."""

from __future__ import annotations

import math
from datetime import date, datetime

import duckdb
import pytest
from trends_fixtures import build_db, insert_scores, register_model, trends_config

from marketpulse.errors import MarketpulseError
from marketpulse.runtime import results
from marketpulse.trends import TrendsConfig, format_report, run


@pytest.fixture
def db(tmp_path):
    return build_db(tmp_path / "market.duckdb")


def _cfg(db, **kw):
    return trends_config(db, **kw)


def _rows(db, table="trend_posts_day"):
    con = duckdb.connect(str(db), read_only=True)
    cur = con.execute(f"SELECT * FROM {table} ORDER BY brand, bucket")
    names = [d[0] for d in cur.description]
    out = {(r[0], r[1].day): dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    con.close()
    return out


def test_volume_shares_index_and_empty_buckets(db):
    result = run(_cfg(db))
    rows = _rows(db)
    # every brand gets every day from the first (Jan 1) to the last (Jan 8) bucket
    assert sorted(rows) == [(b, d) for b in "AB" for d in range(1, 9)]
    assert result.n_rows == 16 and result.n_buckets == 8
    a1 = rows[("A", 1)]
    assert a1["bucket"] == date(2024, 1, 1)
    assert (a1["volume"], a1["n_positive"], a1["n_neutral"], a1["n_negative"]) == (4, 2, 1, 1)
    assert (a1["share_positive"], a1["share_neutral"], a1["share_negative"]) == (0.5, 0.25, 0.25)
    assert a1["net_index"] == 0.25
    assert rows[("A", 8)]["net_index"] == -0.75
    for key in [("A", 4), ("B", 6), ("B", 7), ("B", 8)]:
        empty = rows[key]
        assert empty["volume"] == 0 and empty["n_positive"] == 0
        assert empty["net_index"] is None and empty["share_positive"] is None
        assert empty["is_shift"] is False
    assert result.positive == "positive" and result.negative == "negative"


def test_rolling_mean_and_change_skip_empty_buckets(db):
    run(_cfg(db))
    rows = _rows(db)
    assert rows[("A", 4)]["index_rolling"] == pytest.approx(0.5)  # days 2, 3 (4 is empty)
    assert rows[("A", 5)]["index_rolling"] == pytest.approx(0.375)  # days 3, 5
    assert rows[("A", 7)]["index_rolling"] == pytest.approx(0.5)  # .25, .75, .5
    assert rows[("A", 5)]["index_change"] is None  # previous bucket is empty
    assert rows[("A", 6)]["index_change"] == pytest.approx(0.5)
    assert rows[("A", 8)]["index_change"] == pytest.approx(-1.25)


def test_z_score_against_trailing_window_flags_the_drop(db):
    result = run(_cfg(db, alpha=0.1))
    rows = _rows(db)
    # trailing days 5-7: .25, .75, .5 -> mean .5, sample variance .0625 (n = 3); day 8's
    # sampling variance (.75 - .75**2) / 4 is below the trailing days' mean (.09375), so
    # z = (-.75 - .5) / sqrt(.0625 * (1 + 1/3)), a t statistic with 2 degrees of freedom
    a8 = rows[("A", 8)]
    z = -1.25 / math.sqrt(0.0625 * 4 / 3)
    assert a8["trailing_mean"] == pytest.approx(0.5)
    assert a8["z_score"] == pytest.approx(z)
    assert a8["p_value"] == pytest.approx(1 - abs(z) / math.sqrt(2 + z * z))  # t, 2 df
    assert a8["p_value"] == pytest.approx(0.0495, abs=1e-4)
    assert a8["is_shift"] is True
    # fewer than 3 non-empty buckets in the trailing window: no z
    assert rows[("A", 7)]["z_score"] is None and rows[("A", 3)]["z_score"] is None
    # B: trailing index is flat (variance 0), so the floor, 0.5**2 x the trailing days'
    # sampling variance at their pooled shares (3 positive, 3 negative of 6, half a row of
    # each kind added: 3.5 / 7.5 each, per-row variance 7 / 7.5) over 2 posts a day,
    # stands in instead of dividing by zero
    b5 = rows[("B", 5)]
    assert b5["net_index"] == pytest.approx(1 / 3)
    floor = 0.25 * (7 / 7.5) * 0.5
    assert b5["z_score"] == pytest.approx((1 / 3) / math.sqrt(floor * 4 / 3))
    assert b5["is_shift"] is False
    assert [(r["brand"], r["bucket"].day) for r in result.flagged] == [("A", 8)]


def test_short_series_forecast_the_window_average(db):
    """8 days is below the backtest's minimum: the forecast is the mean of the last
    --window buckets (an empty bucket carries the last index forward), with no band."""
    result = run(_cfg(db))
    rows = _rows(db)
    a8, b8 = rows[("A", 8)], rows[("B", 8)]
    assert a8["forecast_next"] == pytest.approx((0.75 + 0.5 - 0.75) / 3)  # days 6-8
    assert b8["forecast_next"] == pytest.approx(1 / 3)  # day 5, carried to days 6-8
    assert a8["forecast_low"] is None and a8["forecast_high"] is None
    assert all(r["forecast_next"] is None for k, r in rows.items() if k[1] < 8)
    con = duckdb.connect(str(db), read_only=True)
    ahead = con.execute(
        "SELECT brand, bucket, step, model, forecast FROM forecast_posts_day ORDER BY ALL"
    ).fetchall()
    con.close()
    assert [(b, d.day, s) for b, d, s, *_ in ahead] == [
        (b, 8 + s, s) for b in "AB" for s in (1, 2, 3, 4)
    ]
    assert {m for *_, m, _ in ahead} == {"WindowAverage (short series)"}
    assert "skill is unknown" in format_report(result)
    con = duckdb.connect(str(db), read_only=True)
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE forecast_backtest_posts_day)").fetchall())  # fmt: skip
    con.close()
    assert (types["model"], types["chosen"]) == ("VARCHAR", "BOOLEAN")  # empty, still typed


def test_threshold_and_window_are_respected(db):
    result = run(_cfg(db))  # alpha 0.01: A8's p = .0495 from 3 trailing days is no shift
    assert result.flagged == []
    assert "No shifts flagged (p <= 0.01)" in format_report(result)
    run(_cfg(db, window=4))
    # window 4: trailing days 4-7 hold 3 non-empty buckets (.25, .75, .5) -> same z
    assert _rows(db)[("A", 8)]["z_score"] == pytest.approx(-1.25 / math.sqrt(0.0625 * 4 / 3))
    assert _rows(db)[("A", 7)]["z_score"] is not None  # days 3, 5, 6


def test_no_group_and_weekly_grain(db):
    result = run(
        TrendsConfig(db=db, source="posts", id_col="id", time_col="posted_at", grain="week")
    )
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT bucket, volume, net_index FROM trend_posts_week").fetchall()
    con.close()
    # Jan 1-7 2024 is one ISO week (Monday Jan 1), Jan 8 the next
    total = sum(sum(c) for (_, d), c in _counts().items() if d <= 7)
    assert rows[0][:2] == (date(2024, 1, 1), total)
    assert rows[1][0] == date(2024, 1, 8) and rows[1][1] == 4
    assert result.latest[0]["bucket"] == date(2024, 1, 8)


def _counts():
    from trends_fixtures import COUNTS

    return COUNTS


def test_latest_view_uses_newest_registered_model_after_rescore(db):
    """A re-score by a newer model replaces, never adds to, the old scores."""
    con = duckdb.connect(str(db))
    # the newer model sorts *before* v1 by name and scored earlier: only registered_at counts
    register_model(con, "a-newer", datetime(2024, 3, 1))
    ids = [r[0] for r in con.execute("SELECT id FROM posts WHERE brand = 'A'").fetchall()]
    insert_scores(con, "a-newer", [(i, "negative") for i in ids])
    con.execute(
        "UPDATE scores SET scored_at = TIMESTAMP '2023-01-01' WHERE model_version = 'a-newer'"
    )
    n_posts = con.execute("SELECT count(*) FROM posts").fetchone()[0]
    con.close()
    result = run(_cfg(db))
    con = duckdb.connect(str(db), read_only=True)
    n_latest, n_ids = con.execute(
        "SELECT count(*), count(DISTINCT id) FROM latest_scores"
    ).fetchone()
    versions = dict(
        con.execute(
            "SELECT p.brand, list(DISTINCT l.model_version) FROM latest_scores l "
            "JOIN posts p USING (id) GROUP BY p.brand"
        ).fetchall()
    )
    volume = con.execute("SELECT sum(volume) FROM trend_posts_day").fetchone()[0]
    con.close()
    assert n_latest == n_ids == n_posts
    assert versions == {"A": ["a-newer"], "B": ["v1"]}
    assert volume == n_posts  # no double counting
    rows = _rows(db)
    assert rows[("A", 1)]["net_index"] == -1.0
    assert rows[("B", 5)]["net_index"] == pytest.approx(1 / 3)
    assert result.latest_view == "latest_scores"
    # two models behind the trend: named with their rows and span, in case one took over
    n_a = len(ids)
    assert result.models_note.startswith("the scores come from 2 model versions (")
    assert f"a-newer: {n_a:,} rows, 2024-01-" in result.models_note
    assert f"v1: {n_posts - n_a:,} rows, 2024-01-" in result.models_note
    assert f"note: {result.models_note}" in format_report(result)


def test_a_mix_of_label_schemes_is_refused_and_one_scheme_is_not(db):
    """A newer model with other labels rescored part of the table: its rows would count
    as volume but on neither side of positive - negative. Refused, naming the model."""
    con = duckdb.connect(str(db))
    market = ["bearish", "bullish", "neutral"]
    id_type = con.execute("SELECT typeof(id) FROM scores LIMIT 1").fetchone()[0]
    results.prepare(con, "scores", id_type, market)  # adds p_bearish, p_bullish as a run does
    register_model(con, "market", datetime(2024, 3, 1), labels=market)
    ids = [r[0] for r in con.execute("SELECT id FROM posts WHERE brand = 'A'").fetchall()]
    insert_scores(con, "market", [(i, "bullish") for i in ids], labels=market)
    con.close()
    with pytest.raises(MarketpulseError) as err:
        run(_cfg(db))
    message = str(err.value)
    assert f"{len(ids):,} rows come from model market (bearish, bullish, neutral)" in message
    assert "score the whole table with one model (the newest, market" in message
    assert "\n" not in message
    with duckdb.connect(str(db), read_only=True) as con:  # no trend table was written
        assert "trend_posts_day" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    # the same labels under a newer model (a retrained one) mix fine
    con = duckdb.connect(str(db))
    register_model(con, "retrained", datetime(2024, 4, 1))
    insert_scores(con, "retrained", [(i, "positive") for i in ids])
    con.close()
    result = run(_cfg(db))
    assert (result.positive, result.negative) == ("positive", "negative")
    assert _rows(db)[("A", 1)]["net_index"] == 1.0


def test_skipped_rows_do_not_count(db):
    con = duckdb.connect(str(db))
    con.execute("UPDATE scores SET label = NULL, reason = 'empty_text' WHERE id = 1")
    con.close()
    run(_cfg(db))
    assert _rows(db)[("A", 1)]["volume"] == 3


def test_label_validation(db):
    with pytest.raises(MarketpulseError, match=r"--positive 'bullish' is not a label"):
        run(_cfg(db, positive="bullish"))
    with pytest.raises(MarketpulseError, match="two different labels"):
        run(_cfg(db, positive="neutral", negative="neutral"))
    result = run(_cfg(db, positive="neutral", negative="negative"))
    assert result.positive == "neutral"
    assert _rows(db)[("A", 1)]["net_index"] == 0.0  # (1 neutral - 1 negative) / 4


def test_default_labels_need_a_known_pair(tmp_path):
    path = tmp_path / "m.duckdb"
    build_db(path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE models SET labels = ['up', 'down', 'flat']")
    con.close()
    with pytest.raises(
        MarketpulseError, match="include none of positive, bullish; pass --positive"
    ):
        run(_cfg(path))


def test_identifiers_are_quoted(tmp_path):
    """Odd but legal column names (spaces, quotes, keywords) work end to end."""
    path = tmp_path / "odd.duckdb"
    build_db(path)
    con = duckdb.connect(str(path))
    con.execute(
        'CREATE TABLE "my posts" AS SELECT id AS "the id", brand AS "group", '
        'posted_at AS "when""s" FROM posts'
    )
    con.close()
    with pytest.raises(MarketpulseError, match="invalid table name"):
        run(TrendsConfig(db=path, source="my posts", id_col="the id", time_col='when"s'))
    con = duckdb.connect(str(path))
    con.execute('ALTER TABLE "my posts" RENAME TO my_posts')
    con.close()
    result = run(
        TrendsConfig(
            db=path,
            source="my_posts",
            id_col="the id",
            time_col='when"s',
            by=("group",),
            grain="day",
            window=3,
            alpha=0.1,
        )
    )
    assert result.trend_table == "trend_my_posts_day"
    assert [(r["group"], r["bucket"].day) for r in result.flagged] == [("A", 8)]


def _thin_counts():
    """Brand A: ten days of ~40 posts, then a day with one negative post."""
    counts = {("A", d): (16 + d % 3, 10 - d % 2, 14) for d in range(1, 11)}
    counts[("A", 11)] = (0, 0, 1)
    return counts


def test_one_post_is_not_a_shift(tmp_path):
    """A bucket whose few rows all carry one label has a sampling variance of 0 at its own
    shares; under "no shift" it is drawn at the trailing rate, so that rate's variance
    over its volume is what its index may stray by."""
    path = build_db(tmp_path / "thin.duckdb", counts=_thin_counts())
    result = run(_cfg(path, window=8, horizon=0))
    rows = _rows(path)
    last = rows[("A", 11)]
    assert last["volume"] == 1 and last["net_index"] == -1.0
    # by hand: trailing days 3-10, pooled shares, extra = s2 x (1/1 - mean(1/volume))
    trail = [_thin_counts()[("A", d)] for d in range(3, 11)]
    index = [(p - n) / (p + u + n) for p, u, n in trail]
    mean = sum(index) / 8
    var = sum((x - mean) ** 2 for x in index) / 7
    total = sum(sum(c) for c in trail) + 1.5  # half a row of each kind added (Jeffreys)
    p_pos, p_neg = (
        (sum(c[0] for c in trail) + 0.5) / total,
        (sum(c[2] for c in trail) + 0.5) / total,
    )
    s2 = p_pos + p_neg - (p_pos - p_neg) ** 2
    inv_volume = sum(1 / sum(c) for c in trail) / 8
    extra = s2 * (1 - inv_volume)
    spread = max(var, 0.25 * s2 * inv_volume)  # the floor: 0.5**2 x the days' sampling variance
    z = (-1 - mean) / math.sqrt(spread * (1 + 1 / 8) + extra)
    assert last["z_score"] == pytest.approx(z)
    assert abs(last["z_score"]) < 2 and not last["is_shift"] and result.flagged == []


def test_identical_trailing_buckets_do_not_make_a_small_move_a_shift(tmp_path):
    """Eight days of 1 positive, 18 neutral, 1 negative (a trailing spread of exactly 0),
    then 2 positive and 18 neutral: at the pooled shares a 20-post index has a standard
    error of ~0.07, so a move of 0.1 is no shift. The floor once came from a fifth of the
    sampling error and made it z = 6.7 (user test)."""
    counts = {("A", day): (1, 18, 1) for day in range(1, 9)} | {("A", 9): (2, 18, 0)}
    path = build_db(tmp_path / "flat.duckdb", counts=counts)
    result = run(_cfg(path, window=8, horizon=0))
    last = _rows(path)[("A", 9)]
    assert last["net_index"] == pytest.approx(0.1) and last["trailing_mean"] == 0
    assert abs(last["z_score"]) < 3 and not last["is_shift"] and result.flagged == []


def test_window_below_three_is_refused(db):
    with pytest.raises(MarketpulseError, match=r"needs 3 trailing buckets\); pass --window 3"):
        run(_cfg(db, window=2))


def test_null_times_are_counted_and_reported(db):
    con = duckdb.connect(str(db))
    con.execute("UPDATE posts SET posted_at = NULL WHERE brand = 'B' AND day(posted_at) = 1")
    con.close()
    result = run(_cfg(db, horizon=0))
    assert result.null_time_rows == 2
    assert sum(r["volume"] for r in _rows(db).values()) == 35  # 37 - 2
    assert "left out: 2 scored rows with a NULL posted_at" in format_report(result)
    from marketpulse.trends import summary

    assert summary(result)["null_time_rows"] == 2


def test_no_row_with_a_time_is_an_error_before_writing(db):
    con = duckdb.connect(str(db))
    con.execute("UPDATE posts SET posted_at = NULL")
    con.close()
    with pytest.raises(MarketpulseError) as err:
        run(_cfg(db))
    assert "no scored row of 'posts' has a 'posted_at' (37 have it NULL" in str(err.value)
    assert "pass --time-col" in str(err.value) and "\n" not in str(err.value)
    with duckdb.connect(str(db), read_only=True) as con:
        assert not [r for r in con.execute("SHOW TABLES").fetchall() if "trend" in r[0]]


def _tables(db) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0] for r in con.execute("SHOW TABLES").fetchall()}


def _brands(db, table) -> list[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT list(DISTINCT brand ORDER BY brand) FROM {table}").fetchone()[0]


def _drop_brand_b(db) -> None:
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM posts WHERE brand = 'B'")


def test_bad_text_column_is_refused_before_anything_is_written(db):
    run(_cfg(db, horizon=0))
    _drop_brand_b(db)
    for text_col, message in (("nope", "column 'nope' not found"), ("id", "is INTEGER, not text")):
        with pytest.raises(MarketpulseError, match=message):
            run(_cfg(db, horizon=0, text_col=text_col))
        assert _brands(db, "trend_posts_day") == ["A", "B"]  # the earlier run's table


def test_rerun_drops_the_tables_it_did_not_rebuild(db):
    run(_cfg(db, text_col="text", alpha=0.1))
    assert {"forecast_posts_day", "forecast_backtest_posts_day", "trend_drivers_posts_day"} <= (
        _tables(db)
    )
    run(_cfg(db, horizon=0))
    written = _tables(db)
    assert "trend_posts_day" in written and not {
        t for t in written if t != "trend_posts_day" and "posts_day" in t
    }
    # the documented columns stay, NULL when not computed, so saved queries still run
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute(
            "SELECT count(*), count(forecast_next), count(forecast_low), count(forecast_high) "
            "FROM trend_posts_day"
        ).fetchone() == (16, 0, 0, 0)


def test_a_named_trend_table_gets_its_own_dependent_tables(db):
    run(_cfg(db, text_col="text", alpha=0.1))
    _drop_brand_b(db)
    named = run(_cfg(db, text_col="text", alpha=0.1, trend_table="daily"))
    assert (named.forecast_table, named.backtest_table, named.drivers_table) == (
        "forecast_daily",
        "forecast_backtest_daily",
        "trend_drivers_daily",
    )
    assert _brands(db, "daily") == _brands(db, "forecast_daily") == ["A"]
    # the default trend table's set is untouched (8 days: too short for backtest rows)
    assert _brands(db, "trend_posts_day") == _brands(db, "forecast_posts_day") == ["A", "B"]
    assert {"forecast_backtest_daily", "forecast_backtest_posts_day"} <= _tables(db)
    assert {"trend_drivers_daily", "trend_drivers_posts_day"} <= _tables(db)
    prefixed = run(_cfg(db, trend_table="trend_posts_day_v2"))
    assert prefixed.forecast_table == "forecast_posts_day_v2"
    # the default name in other case is the same table to DuckDB, and so are its forecasts
    cased = run(_cfg(db, trend_table="Trend_Posts_Day"))
    assert cased.forecast_table == "forecast_Posts_Day"
    assert _brands(db, "trend_posts_day") == _brands(db, "forecast_posts_day") == ["A"]


def test_a_run_that_fails_half_way_leaves_the_old_set(db, monkeypatch):
    """Every table of a run commits together: a failure after the trend table (here the
    forecasting extra missing) leaves the earlier run's trend and forecast tables."""
    import sys

    run(_cfg(db))
    _drop_brand_b(db)
    monkeypatch.setitem(sys.modules, "marketpulse.trends.forecast_tables", None)
    with pytest.raises(MarketpulseError, match="trends forecasts need statsforecast"):
        run(_cfg(db))
    assert _brands(db, "trend_posts_day") == _brands(db, "forecast_posts_day") == ["A", "B"]


def test_null_and_empty_groups_print_as_such(db):
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE posts SET brand = NULL WHERE brand = 'B'")
        con.execute("UPDATE posts SET brand = '' WHERE brand = 'A'")
    report = format_report(run(_cfg(db, horizon=0)))
    latest = report.split("Latest day per group:")[1].splitlines()
    assert [line.split()[0] for line in latest[3:5]] == ["(empty)", "(null)"]
    assert "None" not in report


def test_plot_titles_an_empty_group_apart_from_the_total():
    from marketpulse.trends.plot import _key

    assert _key({"brand": ""}, ("brand",)) == "(empty)"
    assert _key({"brand": None}, ("brand",)) == "(null)"
    assert _key({"bucket": date(2024, 1, 1)}, ()) == "all"
