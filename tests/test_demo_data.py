"""Demo data: the snippets file, its extraction from the sdist, and the simulated stream."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from datetime import datetime

import duckdb
import pytest
from conftest import AMAZON, require_shared
from trends_fixtures import create_results_tables, insert_scores, register_model

from marketpulse.errors import MarketpulseError
from marketpulse.tools import demo_data
from marketpulse.tools.demo_data import (
    INNER,
    MEMBER,
    SDIST,
    SHARED_COPY,
    StreamSpec,
    build_stream,
    obtain_snippets,
    read_snippets,
    split_snippets,
)
from marketpulse.trends.stage import TrendsConfig, run


@pytest.fixture(scope="module")
def snippets():
    return read_snippets(require_shared(AMAZON / "ground_truth.tsv"))


def _fake_sdist(path, member_bytes: bytes) -> None:
    """The sdist's layout: a tar.gz holding a tar.gz holding the snippets file."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        info = tarfile.TarInfo(MEMBER)
        info.size = len(member_bytes)
        tar.addfile(info, io.BytesIO(member_bytes))
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(INNER)
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))


def test_labels_bucket_at_half_a_point(snippets):
    assert len(snippets) == 3708
    assert Counter(s.label for s in snippets) == {
        "positive": 1750,
        "neutral": 723,
        "negative": 1235,
    }


def test_obtain_extracts_from_the_sdist_and_checks_the_hash(tmp_path):
    data = require_shared(AMAZON / "ground_truth.tsv").read_bytes()
    _fake_sdist(tmp_path / SDIST, data)
    path = obtain_snippets(tmp_path, log=lambda _: None)
    assert path.read_bytes() == data
    (tmp_path / SDIST).unlink()
    assert obtain_snippets(tmp_path, log=lambda _: None) == path  # cached, no download
    path.unlink()
    _fake_sdist(tmp_path / SDIST, data.replace(b"troubleshooting", b"x"))
    with pytest.raises(MarketpulseError, match="unexpected contents; delete"):
        obtain_snippets(tmp_path, log=lambda _: None)


def test_failed_download_falls_back_to_the_shared_data_folder_given(tmp_path, monkeypatch):
    import subprocess

    data = require_shared(AMAZON / "ground_truth.tsv").read_bytes()
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")
    monkeypatch.setattr(demo_data.subprocess, "run", lambda *a, **kw: failed)
    shared = tmp_path / "shared"
    (shared / SHARED_COPY).parent.mkdir(parents=True)
    (shared / SHARED_COPY).write_bytes(data)

    with pytest.raises(MarketpulseError, match="No matching distribution found.*--snippets"):
        obtain_snippets(tmp_path / "cache", log=lambda _: None)
    path = obtain_snippets(tmp_path / "cache", log=lambda _: None, shared_data=shared)
    assert path.parent == tmp_path / "cache" and path.read_bytes() == data

    (shared / SHARED_COPY).write_bytes(data.replace(b"troubleshooting", b"x"))
    with pytest.raises(MarketpulseError, match="not the expected snippets file"):
        obtain_snippets(tmp_path / "cache2", log=lambda _: None, shared_data=shared)


def test_split_is_stratified_and_disjoint(snippets):
    train, rest = split_snippets(snippets, 1500, seed=1)
    assert len(train) + len(rest) == 3708
    assert abs(len(train) - 1500) <= 2
    assert not {s.snippet_id for s in train} & {s.snippet_id for s in rest}
    share = Counter(s.label for s in train)["positive"] / len(train)
    assert share == pytest.approx(1750 / 3708, abs=0.002)
    assert split_snippets(snippets, 1500, seed=1) == (train, rest)


def test_stream_has_exact_mixes_and_the_planted_shock(snippets):
    _, pool = split_snippets(snippets, 1500, seed=1)
    spec = StreamSpec()
    posts = build_stream(pool, spec)
    assert len(posts) == len(spec.brands) * spec.weeks * spec.posts_per_week
    assert [p.id for p in posts] == list(range(1, len(posts) + 1))
    counts = Counter(
        (p.brand, (p.posted_at.date() - spec.start).days // 7, p.true_label) for p in posts
    )
    assert all(0 <= w < spec.weeks for _, w, _ in counts)
    assert counts[("Contoso", spec.shock_week, "negative")] == 68  # 85% of 80
    assert counts[("Contoso", spec.shock_week - 1, "negative")] == 24  # 30% of 80
    assert counts[("Northwind", spec.shock_week, "negative")] == 20  # 25% of 80
    assert counts[("Globex", 10, "positive")] == 40  # 40% + 10 weeks x 1% of 80
    texts = {p.text for p in posts}
    assert texts <= {s.text for s in pool}
    assert build_stream(pool, spec) == posts  # seeded


def test_trends_flag_only_the_planted_shock_on_true_labels(snippets, tmp_path):
    """The stream's design: with perfect labels, the shock and nothing else is flagged."""
    _, pool = split_snippets(snippets, 1500, seed=1)
    spec = StreamSpec()
    posts = build_stream(pool, spec)
    db = tmp_path / "stream.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE posts (id BIGINT, brand VARCHAR, posted_at TIMESTAMP)")
    con.executemany(
        "INSERT INTO posts VALUES (?, ?, ?)", [(p.id, p.brand, p.posted_at) for p in posts]
    )
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "truth", datetime(2026, 1, 1))
    insert_scores(con, "truth", [(p.id, p.true_label) for p in posts])
    con.close()
    result = run(
        TrendsConfig(
            db=db, source="posts", id_col="id", time_col="posted_at", by=("brand",), window=4
        )
    )
    assert [(r["brand"], r["bucket"]) for r in result.flagged] == [
        (spec.shock_brand, spec.shock_bucket)
    ]
    assert result.n_rows == len(spec.brands) * spec.weeks
