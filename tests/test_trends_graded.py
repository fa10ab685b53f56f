"""Graded labels (`very negative` ... `very positive`): a side of several labels, and the
note when the default side of one label leaves graded ones out of the index."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import duckdb
import pytest
from click.testing import CliRunner
from trends_fixtures import create_results_tables, insert_scores, register_model

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.trends.labels import pick_labels

GRADED = ["negative", "neutral", "positive", "very negative", "very positive"]
# the user's bucket: 29 very negative, 7 positive, 6 very positive, 108 neutral (150 rows)
DAY = {"very negative": 29, "negative": 0, "neutral": 108, "positive": 7, "very positive": 6}
# the last day: a fall in the graded index carried by very negative posts about refunds
LAST = {"very negative": 80, "negative": 0, "neutral": 60, "positive": 5, "very positive": 5}
DAYS = 6


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "graded.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id INTEGER, posted_at TIMESTAMP, text VARCHAR)")
    create_results_tables(con, labels=GRADED)
    register_model(con, "g1", datetime(2024, 2, 1), labels=GRADED)
    posts, scores = [], []
    for day in range(DAYS):
        for label, n in (LAST if day == DAYS - 1 else DAY).items():
            for k in range(n):
                id_ = len(posts) + 1
                words = "refund delay again" if label == "very negative" and day == DAYS - 1 else ""
                at = datetime(2024, 1, 1 + day, 8) + timedelta(minutes=k)
                posts.append([id_, at, f"{label} post {id_} {words}"])
                scores.append((id_, label))
    con.executemany("INSERT INTO posts VALUES (?, ?, ?)", posts)
    insert_scores(con, "g1", scores, labels=GRADED)
    con.close()
    return path


def _invoke(db, *extra):
    args = ["trends", "--db", str(db), "--source", "posts", "--id-col", "id"]
    args += ["--time-col", "posted_at", "--grain", "day", "--window", "3", *extra]
    return CliRunner().invoke(main, args)


def _first_day(db):
    with duckdb.connect(str(db), read_only=True) as con:
        cur = con.execute("SELECT * FROM trend_posts_day ORDER BY bucket LIMIT 1")
        return dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))


def test_default_sides_name_the_graded_labels_they_leave_out(db):
    res = _invoke(db)
    assert res.exit_code == 0, res.output
    row = _first_day(db)
    assert (row["n_very_negative"], row["n_positive"], row["n_very_positive"]) == (29, 7, 6)
    assert row["net_index"] == pytest.approx(7 / 150)  # one label a side, as before
    note = (
        "trends: note: index = (positive - negative) / volume: 'very positive', "
        "'very negative' count in volume only; pass "
        '--positive "positive,very positive" --negative "negative,very negative" to add them'
    )
    assert note in res.output
    summary = json.loads(_invoke(db, "--json").stdout)
    assert summary["labels_note"].startswith("index = (positive - negative) / volume: 'very")


def test_several_labels_a_side_make_the_graded_index(db):
    res = _invoke(
        db, "--positive", "very positive,positive", "--negative", "negative,very negative"
    )
    assert res.exit_code == 0, res.output
    assert "trends: note:" not in res.output
    assert "index = (very positive + positive - negative - very negative) / volume" in res.output
    row = _first_day(db)
    assert row["net_index"] == pytest.approx((7 + 6 - 29) / 150)  # -0.107
    assert (row["n_very_negative"], row["n_negative"], row["volume"]) == (29, 0, 150)
    summary = json.loads(_invoke(db, "--json", "--positive", "positive,very positive").stdout)
    assert (summary["positive"], summary["negative"]) == ("positive,very positive", "negative")
    assert summary["labels_note"].startswith(
        "index = (positive + very positive - negative) / volume: 'very negative' count"
    )
    # --positive given: only the defaulted negative side is named
    assert summary["labels_note"].endswith(
        """pass --negative "negative,very negative" to add them"""
    )


def test_a_graded_side_drives_the_drivers(db):
    """The last day's fall is very negative posts: with a graded negative side they are the
    shift's label, so their words are its drivers and their texts its examples."""
    res = _invoke(
        db, "--positive", "positive,very positive", "--negative", "negative,very negative",
        "--text-col", "text", "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT direction, term, n_direction, examples FROM trend_drivers_posts_day "
            "ORDER BY rank"
        ).fetchall()
    assert rows, "no drivers for the flagged fall"
    direction, _, n_direction, examples = next(r for r in rows if r[1] == "refund delay")
    assert (direction, n_direction) == ("negative", 80)  # every refund post is very negative
    assert all(text.startswith("very negative post") for text in examples)


def test_bad_sides_are_refused_by_name(db):
    res = _invoke(db, "--positive", "positive,very good")
    assert res.exit_code == 1
    assert "--positive 'very good' is not a label of the model" in res.output
    res = _invoke(db, "--positive", "positive,neutral", "--negative", "negative,neutral")
    assert res.exit_code == 1
    assert "--positive and --negative would both count 'neutral'" in res.output
    with duckdb.connect(str(db), read_only=True) as con:  # nothing written
        assert "trend_posts_day" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}


def test_a_label_with_a_comma_is_one_label():
    models = [("v1", ["good, mostly", "bad", "neutral"], 10)]
    assert pick_labels(models, "good, mostly", "bad") == (("good, mostly",), ("bad",))
    with pytest.raises(MarketpulseError, match="'good' is not a label"):
        pick_labels(models, "good,bad", "neutral")
