"""trend_drivers: the words behind a flagged shift, on planted posts and on real review text."""

from __future__ import annotations

import random
import re
from datetime import date, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest
from conftest import AMAZON, require_shared
from trends_fixtures import create_results_tables, insert_scores, register_model

from marketpulse.errors import MarketpulseError
from marketpulse.trends.drivers import write_drivers
from marketpulse.trends.stage import TrendsConfig, run

START = date(2024, 1, 1)  # a Monday
SUBJECTS = ["the new phone", "customer service", "the app", "shipping", "the price", "battery"]
PHRASES = {
    "positive": ["works great", "is excellent", "was fast", "impressed me", "feels solid"],
    "neutral": ["was announced", "is available", "came out today", "is listed online"],
    "negative": ["is slow", "was late", "disappointed me", "keeps crashing", "feels cheap"],
}
FILLER = ["today", "this week", "again", "honestly", "so far"]
SHOCK_WEEK = 5  # brand A, negative: recall and lawsuit
RISE_WEEK = 6  # brand B, positive: dividend
QUIET_WEEK = 5  # brand B, not flagged, though its negatives talk about an outage


def _plain(rng: random.Random, label: str) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(PHRASES[label])} {rng.choice(FILLER)}"


def _week(brand: str, week: int, rng: random.Random) -> list[tuple[str, str, float]]:
    """(label, text, confidence) of one brand-week, 20 posts."""
    if brand == "A" and week == SHOCK_WEEK:
        s = lambda: rng.choice(SUBJECTS)  # noqa: E731
        negative = [
            ("recall announced, sell now", 0.99),
            ("recall announced, sell now", 0.98),  # the same text again: shown once
            (f"the recall of {s()} is a mess", 0.97),
            (f"recall notice: {s()} {rng.choice(PHRASES['negative'])}", 0.80),
            (f"they issued a recall and {s()} {rng.choice(PHRASES['negative'])}", 0.70),
            (f"a recall again, and a lawsuit follows for {s()}", 0.60),
            (f"lawsuit filed over {s()}", 0.90),
            (f"lawsuit says {s()} {rng.choice(PHRASES['negative'])}", 0.85),
            (f"a lawsuit is coming for {s()}", 0.75),
            (f"class action over {s()} {rng.choice(FILLER)}", 0.65),
            (f"class action filed, {s()} {rng.choice(PHRASES['negative'])}", 0.55),
            (f"another class action for {s()}", 0.50),
        ]
        positive = [
            ("recall fears are overblown, battery works great", 0.995),  # not an example
            # new this week too, but on the other side of the shift
            (f"loved the giveaway, {_plain(rng, 'positive')}", 0.9),
            (f"the giveaway was fun, {_plain(rng, 'positive')}", 0.9),
            (f"giveaway winners announced, {_plain(rng, 'positive')}", 0.9),
        ]
        neutral = [(_plain(rng, "neutral"), 0.9) for _ in range(20 - len(negative) - len(positive))]
        return (
            [("negative", t, c) for t, c in negative]
            + [("positive", t, c) for t, c in positive]
            + [("neutral", t, c) for t, c in neutral]
        )
    if brand == "A":
        mix = {"positive": 10, "neutral": 5, "negative": 5}
    elif week == RISE_WEEK:
        mix = {"positive": 17, "neutral": 2, "negative": 1}
    else:
        mix = {"positive": 8 + week % 2, "neutral": 6, "negative": 6 - week % 2}
    posts = []
    for label, n in mix.items():
        for k in range(n):
            text = _plain(rng, label)
            if brand == "B" and week == RISE_WEEK and label == "positive" and k < 8:
                text = f"dividend raised, {text}"
            elif brand == "B" and week == QUIET_WEEK and label == "negative" and k < 4:
                text = f"outage again, {text}"
            elif brand == "B" and 1 <= week <= 4 and label == "neutral" and k < 3:
                text = f"no recall expected for {text}"  # B's own history: must not reach A
            posts.append((label, text, 0.9))
    return posts


def _build(path, by_brand: bool = True):
    rng = random.Random(3)
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id BIGINT, brand VARCHAR, posted_at TIMESTAMP, body VARCHAR)")
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "v1", datetime(2024, 3, 1))
    posts, scores, confidence = [], [], []
    for week in range(8):
        for brand in ("A", "B") if by_brand else ("A",):
            for k, (label, text, conf) in enumerate(_week(brand, week, rng)):
                id_ = len(posts) + 1
                at = datetime.combine(START, datetime.min.time()) + timedelta(
                    weeks=week, hours=7 * k
                )
                posts.append((id_, brand, at, text))
                scores.append((id_, label))
                confidence.append((conf, id_))
    _insert_posts(con, posts)
    insert_scores(con, "v1", scores)
    changed = [(c, i) for c, i in confidence if c != 0.9]  # the fixture writes 0.9
    con.executemany("UPDATE scores SET confidence = ? WHERE id = ?", changed)
    con.close()
    return path


def _insert_posts(con, rows: list[tuple]) -> None:
    """Through Arrow: executemany takes seconds for a few thousand rows."""
    names = ["id", "brand", "posted_at", "body"]
    con.register("_posts", pa.table({k: [r[i] for r in rows] for i, k in enumerate(names)}))
    con.execute("INSERT INTO posts SELECT * FROM _posts")
    con.unregister("_posts")


def _drivers(db, by=("brand",), **kw):
    result = run(
        TrendsConfig(db=db, source="posts", id_col="id", time_col="posted_at", by=by, window=4)
    )
    con = duckdb.connect(str(db))
    try:
        n = write_drivers(
            con,
            trend_table=result.trend_table,
            source="posts",
            id_col="id",
            time_col="posted_at",
            text_col="body",
            by=by,
            grain="week",
            window=4,
            view=result.latest_view,
            positive=result.positive,
            negative=result.negative,
            **kw,
        )
        cur = con.execute("SELECT * FROM trend_drivers")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
    assert n == len(rows)
    return result, rows


@pytest.fixture
def planted(tmp_path):
    return _build(tmp_path / "planted.duckdb")


def _week_start(week: int) -> date:
    return START + timedelta(weeks=week)


def test_planted_words_rank_first_with_the_most_confident_examples(planted):
    result, rows = _drivers(planted)
    flagged = {(r["brand"], r["bucket"]) for r in result.flagged}
    assert flagged == {("A", _week_start(SHOCK_WEEK)), ("B", _week_start(RISE_WEEK))}
    shock = [r for r in rows if (r["brand"], r["bucket"]) == ("A", _week_start(SHOCK_WEEK))]
    assert [r["rank"] for r in shock] == list(range(1, len(shock) + 1))
    assert {r["direction"] for r in shock} == {"negative"}
    assert {shock[0]["term"], shock[1]["term"]} == {"recall", "lawsuit"}
    assert shock[0]["z"] >= shock[1]["z"] > shock[2]["z"] > 1.0
    recall = next(r for r in shock if r["term"] == "recall")
    # 6 negatives (one text twice) and 1 positive mention it; A never did before
    assert (recall["n_bucket"], recall["n_trailing"], recall["n_direction"]) == (7, 0, 6)
    # most confident negatives first, each text once, the confident positive left out
    first, second, third = recall["examples"]
    assert first == "recall announced, sell now"
    assert second.startswith("the recall of ") and third.startswith("recall notice: ")
    assert len(recall["example_ids"]) == 3
    assert all("overblown" not in t for r in shock for t in r["examples"])
    terms = [r["term"] for r in shock]
    # the phrase replaces unigrams seen only inside it
    assert "class action" in terms and "class" not in terms and "action" not in terms


def test_terms_of_the_other_side_are_left_out(planted):
    _, rows = _drivers(planted, min_z=0.0)
    shock = {r["term"] for r in rows if r["brand"] == "A"}
    # over-represented in A's shock week too, but in positive texts: not a reason for a fall
    assert "recall" in shock and "giveaway" not in shock


def test_unflagged_buckets_get_no_rows_and_groups_do_not_leak(planted):
    _, rows = _drivers(planted)
    assert {(r["brand"], r["bucket"]) for r in rows} == {
        ("A", _week_start(SHOCK_WEEK)),
        ("B", _week_start(RISE_WEEK)),
    }
    assert not any("outage" in r["term"] for r in rows)  # B's quiet week is not flagged
    rise = [r for r in rows if r["brand"] == "B"]
    assert rise[0]["term"] == "dividend raised" and rise[0]["direction"] == "positive"
    assert rise[0]["n_bucket"] == rise[0]["n_direction"] == 8 and rise[0]["n_trailing"] == 0
    assert all("recall" not in t and "lawsuit" not in t for r in rise for t in r["examples"])
    # B talked about recalls for weeks; A's window must not see it
    recall = next(r for r in rows if r["brand"] == "A" and r["term"] == "recall")
    assert recall["n_trailing"] == 0


def test_rerun_replaces_rows(planted):
    _, first = _drivers(planted)
    _, second = _drivers(planted)
    assert first == second and len(first) > 0
    con = duckdb.connect(str(planted), read_only=True)
    assert con.execute("SELECT count(*) FROM trend_drivers").fetchone()[0] == len(first)
    types = dict(
        con.execute("SELECT column_name, column_type FROM (DESCRIBE trend_drivers)").fetchall()
    )
    con.close()
    assert types["examples"] == "VARCHAR[]" and types["example_ids"] == "BIGINT[]"
    assert types["bucket"] == "DATE" and types["rank"] == "INTEGER"


def test_without_groups(tmp_path):
    db = _build(tmp_path / "one.duckdb", by_brand=False)
    result, rows = _drivers(db, by=())
    assert [r["bucket"] for r in result.flagged] == [_week_start(SHOCK_WEEK)]
    assert {rows[0]["term"], rows[1]["term"]} == {"recall", "lawsuit"}
    assert "brand" not in rows[0]


def test_no_flagged_bucket_leaves_an_empty_table(planted):
    result, rows = _drivers(planted, top_words=1)
    assert len(rows) == 2  # top_words caps each bucket
    con = duckdb.connect(str(planted))
    con.execute(f"UPDATE {result.trend_table} SET is_shift = false")
    n = write_drivers(
        con,
        trend_table=result.trend_table,
        source="posts",
        id_col="id",
        time_col="posted_at",
        text_col="body",
        by=("brand",),
        grain="week",
        window=4,
        view=result.latest_view,
        positive="positive",
        negative="negative",
    )
    assert n == 0 and con.execute("SELECT count(*) FROM trend_drivers").fetchone()[0] == 0
    con.close()


def test_missing_text_column_names_the_flag(planted):
    result, _ = _drivers(planted)
    con = duckdb.connect(str(planted))
    with pytest.raises(MarketpulseError, match="column 'text' not found.*--text-col"):
        write_drivers(
            con,
            trend_table=result.trend_table,
            source="posts",
            id_col="id",
            time_col="posted_at",
            text_col="text",
            by=("brand",),
            grain="week",
            window=4,
            view=result.latest_view,
            positive="positive",
            negative="negative",
        )
    con.close()


def test_demo_contoso_shock_is_explained_by_its_negative_snippets(tmp_path):
    """Real review text: the demo's stream with the human labels as scores."""
    from marketpulse.tools.demo_data import StreamSpec, build_stream, read_snippets, split_snippets

    snippets = read_snippets(require_shared(AMAZON / "ground_truth.tsv"))
    _, pool = split_snippets(snippets, 1500, seed=1)
    spec = StreamSpec()
    posts = build_stream(pool, spec)
    db = tmp_path / "stream.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE posts (id BIGINT, brand VARCHAR, posted_at TIMESTAMP, body VARCHAR)")
    _insert_posts(con, [(p.id, p.brand, p.posted_at, p.text) for p in posts])
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "truth", datetime(2026, 1, 1))
    insert_scores(con, "truth", [(p.id, p.true_label) for p in posts])
    con.close()

    _, rows = _drivers(db)
    assert {(r["brand"], r["bucket"]) for r in rows} == {(spec.shock_brand, spec.shock_bucket)}
    assert len(rows) >= 3 and {r["direction"] for r in rows} == {"negative"}
    week = [
        p
        for p in posts
        if p.brand == spec.shock_brand
        and spec.shock_bucket <= p.posted_at.date() < spec.shock_bucket + timedelta(weeks=1)
    ]
    negatives = [p.text for p in week if p.true_label == "negative"]
    by_id = {p.id: p for p in week}
    for r in rows:
        parts = set(r["term"].split())
        # words of the week's negative snippets
        assert 0 < r["n_direction"] <= sum(parts <= _words(t) for t in negatives)
        assert r["examples"] == [by_id[i].text for i in r["example_ids"]]
        assert all(by_id[i].true_label == "negative" for i in r["example_ids"])
        assert all(parts <= _words(t) for t in r["examples"]) and r["z"] >= 1.0


def _words(text: str) -> set[str]:
    return set(re.findall(r"[\w$']+", text.lower().replace("’", "'")))
