"""trend_drivers: the words behind a flagged shift, on planted posts and on real review text."""

from __future__ import annotations

import math
import random
import re
from datetime import date, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest
from conftest import AMAZON, require_shared
from trends_fixtures import create_results_tables, insert_scores, register_model

from marketpulse.errors import MarketpulseError
from marketpulse.trends import format_report
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
    # counts are plain integers, not the HUGEINT sum() gives
    assert {types[c] for c in ("n_bucket", "n_trailing", "n_direction")} == {"BIGINT"}


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


def test_demo_contoso_shock_has_no_common_topic_to_name(tmp_path):
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

    # Random negative reviews with no common topic: no over-represented term's texts
    # account for a tenth of the fall, so the shock gets no driver rows.
    result, rows = _drivers(db)
    assert [(r["brand"], r["bucket"]) for r in result.flagged] == [
        (spec.shock_brand, spec.shock_bucket)
    ]
    assert rows == []
    # Without the share floor, its over-represented terms are words of its negative snippets.
    _, rows = _drivers(db, min_share=0.0)
    assert {(r["brand"], r["bucket"]) for r in rows} == {(spec.shock_brand, spec.shock_bucket)}
    assert len(rows) >= 3 and {r["direction"] for r in rows} == {"negative"}
    assert all(0 < r["share_of_shift"] < 0.1 for r in rows)
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


CAUSES = {"negative": "screen cracked", "positive": "free upgrade"}
ORDINARY_WORD = {"positive": "nice", "negative": "bad", "neutral": "okay"}
ORDINARY_SUBJECTS = ["phone", "service", "app", "shipping", "price", "support", "store", "delivery"]
SCORE = {"positive": 1, "negative": -1, "neutral": 0}
WINDOW = 8  # the window `_trend_run` passes


def _ordinary(week: int, counts: dict[str, int]) -> list[tuple[int, str, str]]:
    """(week, label, text): `counts[label]` everyday posts of each label in `week`."""
    return [
        (week, label, f"{ORDINARY_SUBJECTS[(week + k) % 8]} {ORDINARY_WORD[label]} {k}")
        for label, n in counts.items()
        for k in range(n)
    ]


def _steady_then(shock: list[tuple[str, str]], weeks: int = 10) -> list[tuple[int, str, str]]:
    """(week, label, text): `weeks` weeks of 10 positive, 10 negative and 10 neutral posts
    (net index 0), then the (label, text) posts of `shock` added to the last week."""
    posts = [p for week in range(weeks) for p in _ordinary(week, dict.fromkeys(ORDINARY_WORD, 10))]
    return posts + [(weeks - 1, label, text) for label, text in shock]


WOBBLE = (0, 1, -1, 1, 1, -1, 1, -1, 0, 1)


def _wobbling(weeks: int) -> list[tuple[int, str, str]]:
    """`weeks` weeks of 30 everyday posts whose net index wobbles: 10 + d positive and
    10 - d negative ones, d = WOBBLE[week] in -1..1 (net index 2d/30)."""
    posts = []
    for week in range(weeks):
        d = WOBBLE[week]
        posts += _ordinary(week, {"positive": 10 + d, "negative": 10 - d, "neutral": 10})
    return posts


def _by_hand(posts, week: int, part) -> dict[str, float]:
    """The shift of `week` and the share of it that its posts whose text satisfies `part`
    account for, from the posts themselves: T = the mean net index of the WINDOW weeks
    before it that have posts, D = I - T, C = sum over the part's posts of (score - T) / V."""

    def index(rows):
        return sum(SCORE[label] for _, label, _ in rows) / len(rows)

    before = [[p for p in posts if p[0] == w] for w in range(week - WINDOW, week)]
    trailing = sum(index(rows) for rows in before if rows) / sum(1 for rows in before if rows)
    bucket = [p for p in posts if p[0] == week]
    shift = index(bucket) - trailing
    part_sum = sum(SCORE[label] - trailing for _, label, text in bucket if part(text))
    return {"trailing": trailing, "shift": shift, "share": part_sum / len(bucket) / shift}


def _trend_run(path, posts, groups, by_col="brand", by_type="VARCHAR"):
    """Write `posts` ((week, label, text), the k-th in group `groups[k]`) to a DuckDB file
    with the `--by` column `by_col`, run trends with --text-col and return its result and
    the rows of the drivers table it wrote, the group column left out, in rank order."""
    con = duckdb.connect(str(path))
    con.execute(
        f'CREATE TABLE posts (id BIGINT, "{by_col}" {by_type}, posted_at TIMESTAMP, body VARCHAR)'
    )
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "v1", datetime(2030, 1, 1))
    start = datetime.combine(START, datetime.min.time())
    rows = [
        (k + 1, group, start + timedelta(weeks=week, minutes=k), text)
        for k, ((week, _, text), group) in enumerate(zip(posts, groups, strict=True))
    ]
    _insert_posts(con, rows)
    insert_scores(con, "v1", [(k + 1, label) for k, (_, label, _) in enumerate(posts)])
    con.close()
    config = TrendsConfig(
        db=path, source="posts", id_col="id", time_col="posted_at", by=(by_col,),
        window=WINDOW, horizon=0, text_col="body",
    )  # fmt: skip
    result = run(config)
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute(
            f'SELECT * EXCLUDE ("{by_col}") FROM {result.drivers_table} ORDER BY bucket, rank'
        )
        names = [d[0] for d in cur.description]
        return result, [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def _trend_drivers(path, posts, groups, by_col="brand", by_type="VARCHAR"):
    """The drivers rows of `_trend_run`."""
    return _trend_run(path, posts, groups, by_col, by_type)[1]


@pytest.mark.parametrize("side", ["negative", "positive"])
def test_a_neutral_topic_new_in_the_shift_week_is_no_driver(tmp_path, side):
    # The shift week adds 40 posts of the cause, all of the shift's side, and a topic of
    # 45 neutral posts and 1 of the shift's side. The topic is the most over-represented
    # and leans the shift's way (1 post against 0), but against the trailing mean (0) its
    # posts account for 1 of the week's 41 net posts of the shift's side: 1/41 of the
    # shift, the cause for 40/41.
    shock = [(side, f"{CAUSES[side]} {k}") for k in range(40)]
    shock += [("neutral", f"livestream tonight {k}") for k in range(45)]
    shock += [(side, "livestream tonight was odd")]
    posts = _steady_then(shock)
    rows = _trend_drivers(tmp_path / f"{side}.duckdb", posts, ["A"] * len(posts))
    assert rows and {r["direction"] for r in rows} == {side}
    assert rows[0]["term"] == CAUSES[side]
    assert (rows[0]["n_bucket"], rows[0]["n_direction"]) == (40, 40)
    assert rows[0]["share_of_shift"] == pytest.approx(40 / 41, abs=1e-12)
    assert _by_hand(posts, 9, lambda t: "livestream" in t)["share"] == pytest.approx(1 / 41)
    assert not [r["term"] for r in rows if "livestream" in r["term"] or "tonight" in r["term"]]
    assert all(r["share_of_shift"] >= 0.1 for r in rows)


OTHER_CAUSES = {"negative": "battery drains", "positive": "loyalty points"}


@pytest.mark.parametrize("side", ["negative", "positive"])
def test_two_causes_in_one_week_are_both_drivers(tmp_path, side):
    # 40 posts of one cause, all of the shift's side, and 40 of a second one, half of the
    # shift's side and half neutral: 110 posts, 70 of the shift's side and 10 of the other,
    # index -0.545 for a fall. The second cause's posts (-0.5) are milder than the bucket,
    # but against the trailing mean (0) they make 20 of its 60 net posts of the shift's
    # side: a third of the shift. The first makes 40 of 60.
    first, second = CAUSES[side], OTHER_CAUSES[side]
    shock = [(side, f"{first} {k}") for k in range(40)]
    shock += [(side if k % 2 else "neutral", f"{second} {k}") for k in range(40)]
    posts = _steady_then(shock)
    result, rows = _trend_run(tmp_path / f"{side}.duckdb", posts, ["A"] * len(posts))
    # the same counts give the same z; the larger share ranks first
    assert [r["term"] for r in rows[:2]] == [first, second]
    assert rows[0]["z"] == pytest.approx(rows[1]["z"])
    assert rows[0]["share_of_shift"] == pytest.approx(40 / 60, abs=1e-12)
    assert rows[1]["share_of_shift"] == pytest.approx(20 / 60, abs=1e-12)
    assert (rows[1]["n_bucket"], rows[1]["n_direction"]) == (40, 20)
    # the report prints each term's z, posts and share of the shift
    assert re.search(rf"{first} \(\d+\.\d, 40, 67%\), {second} \(\d+\.\d, 40, 33%\)",
                     format_report(result))  # fmt: skip


def test_a_single_cause_accounts_for_about_the_whole_shift(tmp_path):
    # Ten weeks of everyday posts whose index wobbles by +-2/30, and 30 negative posts of one
    # cause added to the last. The cause's share is 1 less what the week's 30 everyday
    # posts, of index I_rest, account for: 30 * (I_rest - T) / 60 over D. I_rest and T
    # (a mean of the weeks' indices) both lie within the everyday indices' range R = 4/30,
    # so |share - 1| <= 30 * R / 60 / |D|.
    posts = _wobbling(10) + [(9, "negative", f"recall lawsuit {k}") for k in range(30)]
    hand = _by_hand(posts, 9, lambda t: t.startswith("recall lawsuit"))
    tolerance = 30 * (4 / 30) / 60 / abs(hand["shift"])
    assert hand["trailing"] != 0 and tolerance < 0.15
    _, rows = _trend_run(tmp_path / "one.duckdb", posts, ["A"] * len(posts))
    assert rows[0]["term"] == "recall lawsuit" and rows[0]["n_bucket"] == 30
    share = rows[0]["share_of_shift"]
    assert share == pytest.approx(1, abs=tolerance) and share != pytest.approx(1)
    assert share == pytest.approx(hand["share"], abs=1e-12)


def test_shares_of_a_partition_of_the_bucket_sum_to_the_whole_shift(tmp_path):
    # The shift week holds three topics and nothing else, each post exactly one of them:
    # their shares add up to the whole move from the trailing mean, whatever their mix.
    topics = {
        "screen cracked": {"negative": 20},
        "battery drains": {"negative": 12, "neutral": 6, "positive": 2},
        "refund denied": {"negative": 10, "positive": 5},
    }
    posts = _wobbling(9) + [
        (9, label, f"{term} {k}")
        for term, counts in topics.items()
        for label, n in counts.items()
        for k in range(n)
    ]
    _, rows = _trend_run(tmp_path / "parts.duckdb", posts, ["A"] * len(posts))
    shares = {r["term"]: r["share_of_shift"] for r in rows if r["term"] in topics}
    assert set(shares) == set(topics)
    for term, share in shares.items():
        hand = _by_hand(posts, 9, lambda t, term=term: t.startswith(term))
        assert share == pytest.approx(hand["share"], abs=1e-12)
    assert sum(shares.values()) == pytest.approx(1, abs=1e-12)
    assert _by_hand(posts, 9, lambda t: True)["share"] == pytest.approx(1)


def test_buckets_without_a_shift_to_share_get_no_drivers(planted):
    # Flagged by hand: brand A's first week has no trailing mean and its next ones sit at
    # it (index 0.25 each week), so D is NULL or 0 and no share can be measured there.
    result, _ = _drivers(planted)
    con = duckdb.connect(str(planted))
    try:
        con.execute(f"UPDATE {result.trend_table} SET is_shift = true")
        write_drivers(
            con, trend_table=result.trend_table, source="posts", id_col="id",
            time_col="posted_at", text_col="body", by=("brand",), grain="week", window=4,
            view=result.latest_view, positive="positive", negative="negative", min_z=-100.0,
        )  # fmt: skip
        none = con.execute(
            f"SELECT brand, bucket FROM {result.trend_table} "
            "WHERE trailing_mean IS NULL OR net_index = trailing_mean"
        ).fetchall()
        rows = con.execute("SELECT brand, bucket, share_of_shift FROM trend_drivers").fetchall()
    finally:
        con.close()
    assert ("A", _week_start(0)) in none and ("A", _week_start(1)) in none
    assert not {(b, k) for b, k, _ in rows} & set(none)
    assert rows and all(math.isfinite(share) for *_, share in rows)


def test_group_columns_named_like_the_querys_working_columns(tmp_path):
    # The drivers query's own columns were once named n, y_i, ...: a --by column of such a
    # name stood in for them (no drivers, n_bucket 1, or a DuckDB binder error).
    flagged = _steady_then([("negative", f"recall lawsuit {k}") for k in range(30)])
    posts = flagged + _steady_then([])  # a second group, never flagged
    first = [k < len(flagged) for k in range(len(posts))]
    names = ["A" if f else "B" for f in first]
    expected = _trend_drivers(tmp_path / "brand.duckdb", posts, names)
    assert expected[0]["term"] == "recall lawsuit" and expected[0]["n_bucket"] == 30
    numbers = [1 if f else 2 for f in first]
    differ = {}
    for by_col, groups, by_type in [
        ("n", numbers, "INTEGER"),
        ("y_i", numbers, "INTEGER"),
        ("n", names, "VARCHAR"),
        ("c_total", names, "VARCHAR"),
    ]:
        try:
            got = _trend_drivers(
                tmp_path / f"{by_col}_{by_type}.duckdb", posts, groups, by_col, by_type
            )
        except duckdb.Error as e:
            got = type(e).__name__
        if got != expected:
            differ[f"{by_col} {by_type}"] = got
    assert not differ
