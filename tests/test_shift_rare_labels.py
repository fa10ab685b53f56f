"""Shift flags on brands whose posts are almost all one label (a reviewer's finding).

One negative post among 20, at a brand whose trailing 160 posts were all positive, is a
move of 0.1 in the index against a standard error of ~0.015 at the pooled shares: z = -6.8
and a t p-value of 0.0003, though a brand with 1% negative posts has a negative or more
in 18% of its weeks. Where a side is expected fewer than 5 times in a bucket, p_value is
also the exact tail of the side's count (`queries.trend_table_sql`). These run the
product's trends on real DuckDB files and count what it flags."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from trends_fixtures import create_results_tables, insert_scores, register_model, trends_config

from marketpulse.trends import run
from marketpulse.trends.queries import EXACT_TERMS, RARE_EXPECTED, beta_binomial_tail_sql

LABELS = np.array(["positive", "neutral", "negative"])
ALPHA = 0.01  # the default --alpha
WINDOW = 8


def _write(path, brands: np.ndarray, weeks: np.ndarray, labels: np.ndarray, step="h"):
    """posts(id, brand, posted_at, text), one model's scores: a post per array entry, in
    week `weeks[i]` (an hour apart within the week; `step="m"`: a minute, for busy weeks)."""
    seen: Counter = Counter()
    nth = []
    for key in zip(brands.tolist(), weeks.tolist(), strict=True):
        nth.append(seen[key])
        seen[key] += 1
    at = np.datetime64("2024-01-01T00:00", "us") + weeks * np.timedelta64(168, "h")
    at = at + np.array(nth) * np.timedelta64(1, step)
    ids = np.arange(1, len(labels) + 1)
    con = duckdb.connect(str(path))
    posts = pa.table({"id": ids, "brand": brands, "posted_at": at, "text": labels})
    con.register("posts_arrow", posts)
    con.execute("CREATE TABLE posts AS SELECT * FROM posts_arrow")
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "v1", datetime(2030, 1, 1))
    insert_scores(con, "v1", list(zip(ids.tolist(), labels.tolist(), strict=True)))
    con.close()
    return path


def _steady(path, mix, brands=200, weeks=20, per_week=20, seed=0):
    """`brands` series whose every post is drawn from the same label mix (no change)."""
    rng = np.random.default_rng(seed)
    n = brands * weeks * per_week
    brand = np.repeat([f"b{i:03d}" for i in range(brands)], weeks * per_week)
    week = np.tile(np.repeat(np.arange(weeks), per_week), brands)
    return _write(path, brand, week, LABELS[rng.choice(3, size=n, p=mix)])


def _trend(path):
    """The trend table with each check's trailing window: buckets, side counts, rows."""
    run(trends_config(path, grain="week", window=WINDOW, horizon=0, alpha=ALPHA))
    con = duckdb.connect(str(path), read_only=True)
    rows = con.execute(
        f"""
        SELECT volume, n_positive, n_negative, z_score, p_value, is_shift,
               count(net_index) OVER w AS trail_n, sum(n_positive) OVER w AS trail_pos,
               sum(n_negative) OVER w AS trail_neg, sum(volume) OVER w AS trail_volume
        FROM trend_posts_week
        WINDOW w AS (PARTITION BY brand ORDER BY bucket
                     ROWS BETWEEN {WINDOW} PRECEDING AND 1 PRECEDING)
        ORDER BY brand, bucket
        """
    ).fetchall()
    con.close()
    names = ("volume", "pos", "neg", "z", "p", "flag")
    names += ("trail_n", "trail_pos", "trail_neg", "trail_volume")
    return [dict(zip(names, r, strict=True)) for r in rows if r[4] is not None]


def _expected_rarest(r) -> float:
    """The bucket's expected rows of its rarer side at the pooled trailing shares (half a
    row of each kind added, as the trend SQL does)."""
    total = r["trail_volume"] + 1.5
    return r["volume"] * min(r["trail_pos"] + 0.5, r["trail_neg"] + 0.5) / total


def _t_p(r) -> float:
    stats = pytest.importorskip("scipy.stats")
    return 2 * stats.t.sf(abs(r["z"]), r["trail_n"] - 1)


def _tail(k, n, a, b) -> float:
    """P(K >= k), K ~ beta-binomial(n, a, b), exact: the pmf summed from scipy's logpmf
    (its own sf keeps only ~1e-5 of a 1e-6 tail at these n)."""
    stats = pytest.importorskip("scipy.stats")
    if k <= 0 or k > n:
        return float(k <= 0)
    if min(k, n - k + 1) <= EXACT_TERMS:
        return float(stats.betabinom(n, a, b).sf(k - 1))
    return math.fsum(np.exp(stats.betabinom.logpmf(np.arange(k, n + 1), n, a, b)))


def _expected_p(r) -> float:
    """p_value as documented: the t p-value, and where a side is rare, the larger of it and
    twice the smaller tail of the two sides' counts in the direction of z."""
    if _expected_rarest(r) >= RARE_EXPECTED:
        return _t_p(r)
    n, tv = r["volume"], r["trail_volume"]
    pos = (r["pos"], n, r["trail_pos"] + 0.5, tv - r["trail_pos"] + 1.0)
    neg = (r["neg"], n, r["trail_neg"] + 0.5, tv - r["trail_neg"] + 1.0)

    def fewer(k, n, a, b):  # P(K <= k): the other rows number n - k or more
        return _tail(n - k, n, b, a)

    exact = min(_tail(*neg), fewer(*pos)) if r["z"] < 0 else min(_tail(*pos), fewer(*neg))
    return max(_t_p(r), min(1.0, 2 * exact))


@pytest.mark.parametrize(
    "mix", [(0.99, 0.0, 0.01), (0.02, 0.96, 0.02)], ids=["all-positive", "all-neutral"]
)
def test_one_label_brand_without_change_keeps_alpha(tmp_path, mix):
    """200 brands x 20 weeks x 20 posts, the label mix never changes: at most alpha of
    the 3,400 bucket checks are flagged (the t p-value alone flagged 165 and 44)."""
    rows = _trend(_steady(tmp_path / "steady.duckdb", mix))
    assert len(rows) == 200 * (20 - 3)
    assert all(_expected_rarest(r) < RARE_EXPECTED for r in rows)  # every check is the rare case
    flagged = sum(r["flag"] for r in rows)
    assert flagged / len(rows) <= ALPHA, f"{flagged} of {len(rows)} checks flagged"
    # p_value is still what is_shift thresholds, and a rate at other thresholds too
    assert all(r["flag"] == (r["p"] <= ALPHA) for r in rows)
    assert sum(r["p"] <= 0.05 for r in rows) / len(rows) <= 0.05


def test_one_label_brand_shock_is_flagged_with_the_exact_p_value(tmp_path):
    """Twelve weeks of 20 positive posts (one of them with one negative), then a week of
    14 positive and 6 negative: flagged, and p_value is the larger of the t p-value and
    the doubled beta-binomial tail of the negatives (6 or more of 20)."""
    stats = pytest.importorskip("scipy.stats")
    weeks = [(20, 0)] * 12
    weeks[8] = (19, 1)
    weeks.append((14, 6))
    week = np.repeat(np.arange(len(weeks)), [pos + neg for pos, neg in weeks])
    labels = np.concatenate([["positive"] * pos + ["negative"] * neg for pos, neg in weeks])
    rows = _trend(_write(tmp_path / "shock.duckdb", np.full(len(week), "A"), week, labels))
    last = rows[-1]
    assert (last["pos"], last["neg"], last["trail_neg"], last["trail_volume"]) == (14, 6, 1, 160)
    assert last["z"] < 0 and _expected_rarest(last) < RARE_EXPECTED
    # a fall: more negatives, or fewer positives, than the trailing rate predicts
    others = last["trail_volume"]
    neg_more = stats.betabinom(20, 0.5 + 1, 1.0 + others - 1).sf(6 - 1)
    pos_fewer = stats.betabinom(20, 0.5 + 159, 1.0 + others - 159).cdf(14)
    exact = min(1.0, 2 * min(neg_more, pos_fewer))
    assert last["p"] == pytest.approx(max(_t_p(last), exact), rel=1e-9)
    assert exact > _t_p(last)  # the count, not the t approximation, decides here
    assert last["p"] < 1e-4 and last["flag"]
    # the single negative of week 9, after 160 positives, is no shift (the t p-value alone
    # flagged it: z = -6.8)
    (single,) = [r for r in rows if r["neg"] == 1]
    assert single["z"] == pytest.approx(-6.8, abs=0.05) and _t_p(single) < 0.001
    assert single["p"] > 0.05 and not single["flag"]


def test_mixed_labels_keep_the_t_p_value(tmp_path):
    """Where every side is expected 5 times or more the exact tail plays no part: p_value
    is the t p-value of z_score, as before, and the false-alarm rate stays under alpha."""
    rows = _trend(_steady(tmp_path / "mixed.duckdb", (0.45, 0.2, 0.35), brands=150))
    common = [r for r in rows if _expected_rarest(r) >= RARE_EXPECTED]
    assert len(common) >= 0.95 * len(rows)
    for r in common:
        assert r["p"] == pytest.approx(_t_p(r), rel=1e-9, abs=1e-12)
    assert 0 < sum(r["flag"] for r in rows) / len(rows) <= ALPHA


def test_beta_binomial_tail_sql_is_scipys():
    """The lgamma sum in queries.py agrees with scipy, both ways round the shorter tail."""
    stats = pytest.importorskip("scipy.stats")
    shapes = ((0.5, 160.5), (7.5, 6.0), (159.5, 2.0), (1.5, 1.0))
    cases = [(k, n, a, b) for n in (0, 1, 5, 20, 201) for k in range(-1, n + 2) for a, b in shapes]
    values = ", ".join(f"({k}, {n}, {a}::DOUBLE, {b}::DOUBLE)" for k, n, a, b in cases)
    sql = beta_binomial_tail_sql("k", "n", "a", "b")
    with duckdb.connect() as con:
        got = con.execute(f"SELECT k, n, a, b, {sql} FROM (VALUES {values}) AS v(k, n, a, b)")
        got = got.fetchall()
    assert len(got) == len(cases)
    for k, n, a, b, p in got:
        want = stats.betabinom(n, a, b).sf(k - 1) if n else float(k <= 0)
        assert p == pytest.approx(want, abs=1e-12), (k, n, a, b)
        assert 0 <= p <= 1 and not math.isnan(p)


def test_busy_brand_without_negatives_is_flagged_on_its_positives(tmp_path):
    """A brand with no negative post and 1,500 posts a week, half positive: the negatives
    are the rare side in every week, and the positives' tail would be a sum of ~750
    terms, past EXACT_TERMS, so it is its first EXACT_TERMS terms plus a bound on the rest
    (`test_beta_binomial_tail_sql_past_exact_terms`). A week at 40% positive is
    flagged: the fall is in the common side, whose tail must count (taken as 1 because
    that side is not rare, p_value would stay at 1, as P(negatives >= 0) = 1). Every
    check's p_value is the documented one, the exact tails', to 1e-6."""
    rng = np.random.default_rng(7)
    per_week, weeks = 1500, 16
    shares = [0.5] * weeks
    shares[12] = 0.4
    labels = np.concatenate(
        [np.where(rng.random(per_week) < share, "positive", "neutral") for share in shares]
    )
    week = np.repeat(np.arange(weeks), per_week)
    path = _write(tmp_path / "busy.duckdb", np.full(len(week), "A"), week, labels, step="m")
    rows = _trend(path)
    assert len(rows) == weeks - 3
    assert all(r["neg"] == 0 and _expected_rarest(r) < RARE_EXPECTED for r in rows)
    assert all(min(r["pos"], r["volume"] - r["pos"]) > EXACT_TERMS for r in rows)
    for r in rows:
        assert r["p"] == pytest.approx(_expected_p(r), rel=1e-6), r
    flagged = [r for r in rows if r["flag"]]
    assert [r["pos"] / r["volume"] for r in flagged] == [pytest.approx(0.4, abs=0.02)]
    (shock,) = flagged
    assert shock["z"] < 0 and shock["p"] < 1e-3


def test_beta_binomial_tail_sql_past_exact_terms():
    """Where the shorter sum would exceed EXACT_TERMS terms, the SQL sums the small tail's
    first EXACT_TERMS terms from k outwards, plus a bound on the rest: never below the
    exact tail, and within 1e-6 of it where the distribution's sd is small against
    EXACT_TERMS, a reviewer's skewed case included (a trailing window of 1,500 posts at
    10% positive, a bucket of 15,000: the normal approximation used before gave 0.51x the
    exact tail at 0.001). Quick at any n (no list of more than EXACT_TERMS terms); where
    the shorter sum is short, it stays exact at any n."""
    stats = pytest.importorskip("scipy.stats")
    with duckdb.connect() as con:

        def tails(cases):
            values = ", ".join(f"({k}, {n}, {a}::DOUBLE, {b}::DOUBLE)" for k, n, a, b in cases)
            sql = beta_binomial_tail_sql("k", "n", "a", "b")
            query = f"SELECT {sql} FROM (VALUES {values}) AS v(k, n, a, b)"
            return [p for (p,) in con.execute(query).fetchall()]

        # short sums at a large n: exact (a rare side's count, or its complement's), to the
        # ~1e-10 that differences of lgamma near 2e6 keep (scipy's too, against mpmath)
        n = 20_000
        cases = [(k, n, a, b) for k in (1, 3, 40, EXACT_TERMS, n - EXACT_TERMS + 1, n - 2, n)
                 for a, b in ((0.5, 160_001.0), (9.5, 159_992.0), (159_992.5, 9.0))]  # fmt: skip
        for (k, n, a, b), p in zip(cases, tails(cases), strict=True):
            want = stats.betabinom(n, a, b).sf(k - 1)
            assert p == pytest.approx(want, rel=1e-7, abs=1e-9), (k, a, b)

        # long sums, both tails of each: a trailing window of 1 to 8 buckets' volume, at
        # even and skewed shares (sd 18-122), against the pmf summed from scipy's logpmf
        checked = 0
        shapes = [(1200, 600.5, 601.0), (1200, 4800.5, 4801.0), (3000, 900.5, 2101.0),
                  (3000, 4800.5, 19201.0), (10_000, 5000.5, 5001.0),
                  (15_000, 150.5, 1351.0), (15_000, 1351.0, 150.5)]  # fmt: skip
        for n, a, b in shapes:
            pmf = np.exp(stats.betabinom.logpmf(np.arange(n + 1), n, a, b))
            upper = np.cumsum(pmf[::-1])[::-1]  # P(K >= k), each summed from its small end
            lower = np.concatenate([[0.0], np.cumsum(pmf)[:-1]])  # P(K <= k - 1)
            ks = [k for k in range(EXACT_TERMS + 1, n - EXACT_TERMS + 1)
                  if 1e-6 <= upper[k] <= 0.1 or 1e-6 <= lower[k] <= 0.1]  # fmt: skip
            cases = [(k, n, a, b) for k in ks]
            for (k, *_), p in zip(cases, tails(cases), strict=True):
                if upper[k] <= 0.1:
                    assert p == pytest.approx(upper[k], rel=1e-6), (k, n, a, b)
                    assert p >= upper[k] * (1 - 1e-9), (k, n, a, b)  # never too small
                else:  # the lower tail P(K <= k - 1), as 1 - p (a fewer-side check reads
                    # it as the other kind's upper tail, above): to 1e-5 on a long left tail
                    assert 1 - p == pytest.approx(lower[k], rel=1e-5), (k, n, a, b)
                    assert 1 - p <= lower[k] * (1 + 1e-9), (k, n, a, b)
                checked += 1
        assert checked > 1000
        # a huge bucket (sd 1,700, the tail reaching well past EXACT_TERMS terms): no list
        # of millions of terms, and the bound keeps the tail above the exact one
        n, a, b = 10_000_000, 4e7, 4e7
        d = stats.betabinom(n, a, b)
        ks = [round(d.mean() + z * d.std()) for z in (1.28, 2.33, 3.09, 3.72)]  # 0.1-1e-4
        cases = [(k, n, a, b) for k in ks] + [(600, n, 2.5, 8e7)]
        got = tails(cases)
        for k, p in zip(ks, got[:-1], strict=True):
            span = np.arange(k, k + 20_000)
            want = math.fsum(np.exp(d.logpmf(span)))
            assert want <= p <= 1.2 * want, (k, p, want)
        assert 0 <= got[-1] < 1e-100
