"""Trend math on a hand-made scores table with answers worked out by hand."""

from __future__ import annotations

import math
from datetime import date, datetime

import duckdb
import pytest
from trends_fixtures import build_db, insert_scores, register_model

from marketpulse.errors import MarketpulseError
from marketpulse.runtime import results
from marketpulse.trends import TrendsConfig, format_report, run


@pytest.fixture
def db(tmp_path):
    return build_db(tmp_path / "market.duckdb")


def _cfg(db, **kw):
    base = dict(
        db=db, source="posts", id_col="id", time_col="posted_at", by=("brand",), grain="day"
    )
    base["window"] = kw.pop("window", 3)
    return TrendsConfig(**base, **kw)


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
    # B: trailing index is flat (variance 0), so the floor, 0.2**2 x the trailing days'
    # sampling variance (1 - 0) / 2, stands in instead of dividing by zero
    b5 = rows[("B", 5)]
    assert b5["net_index"] == pytest.approx(1 / 3)
    assert b5["z_score"] == pytest.approx((1 / 3) / math.sqrt(0.04 * 0.5 * 4 / 3))
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
