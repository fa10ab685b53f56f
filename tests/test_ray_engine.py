"""`--engine ray`: the same rows as the local engine, resumable, and a clear error without Ray.

Tests that run Ray share ONE local cluster per test session (`ray_cluster`) and skip
when Ray is not installed (`pip install 'marketpulse[ray]'`).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from test_runtime_support import MARKER, make_source, poison_onnx, spread_bundle

from marketpulse.errors import MarketpulseError
from marketpulse.owned_folders import STAGE_OWNER
from marketpulse.runtime import ScoreConfig, score
from marketpulse.runtime.ray_cluster import Stalled, watched
from marketpulse.runtime.ray_engine import (
    COPIED,
    FAILED,
    Scorer,
    _user_error,
    plan_workers,
    ray_device,
    read_staged,
    score_with_ray,
    split_scored,
)

N = 4000
RESULT_COLS = (
    "id, model_version, label, confidence, p_bearish, p_bullish, p_neutral, reason, truncated"
)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster for this module: "local" so it never joins a `ray start` cluster
    that happens to run on the machine; shut down at the end so the multi-node tests
    (test_ray_cluster.py) can connect this process elsewhere."""
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'marketpulse[ray]'")
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="warning",
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


def config(db, bundle, **kw) -> ScoreConfig:
    # fp32, the reference graph; every graph scores a row the same in any batch
    # (tests/test_determinism.py), so the engines' different windows cannot matter.
    base = dict(
        db=db,
        table="posts",
        id_col="id",
        text_col="text",
        bundle=bundle.path,
        device="cpu",
        variant="fp32",
        threads=1,
        chunk_rows=512,
        batch_tokens=1024,
        progress=False,
    )
    return ScoreConfig(**{**base, **kw})


def rows(db, table="scores"):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(f"SELECT {RESULT_COLS} FROM {table} ORDER BY id").fetchall()
    finally:
        con.close()


def runs(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "SELECT status, rows_scored, rows_skipped, rows_failed, rows_truncated, variant, "
            "engine FROM runs ORDER BY started_at"
        ).fetchall()
    finally:
        con.close()


def assert_same_rows(got, want):
    assert [r[0] for r in got] == [r[0] for r in want]
    assert [(r[1], r[2], r[7], r[8]) for r in got] == [(r[1], r[2], r[7], r[8]) for r in want]
    probs = np.array([r[3:7] for r in got], dtype=float)
    expected = np.array([r[3:7] for r in want], dtype=float)
    assert np.array_equal(np.isnan(probs), np.isnan(expected))  # NULL exactly when skipped
    np.testing.assert_allclose(probs, expected, atol=1e-6, equal_nan=True)


def test_without_ray_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    db = tmp_path / "market.duckdb"
    with pytest.raises(MarketpulseError) as err:
        score_with_ray(ScoreConfig(db, "posts", "id", "text", tmp_path / "bundle"))
    message = str(err.value)
    assert "pip install 'marketpulse[ray]'" in message and "\n" not in message
    assert not db.exists()  # refused before anything was opened or written


def test_device_and_gpu_flags_must_agree():
    assert ray_device("auto", 0) == "cpu"
    assert ray_device("auto", 1) == "cuda"
    assert ray_device("cuda", 0.5) == "cuda"
    with pytest.raises(MarketpulseError, match="--gpus-per-worker 1"):
        ray_device("cuda", 0)
    with pytest.raises(MarketpulseError, match="drop one"):
        ray_device("cpu", 1)


def test_a_missing_stage_dir_is_refused_before_anything_is_written(tmp_path):
    pytest.importorskip("ray")
    db = tmp_path / "market.duckdb"
    with pytest.raises(MarketpulseError, match="--stage-dir .* is not a directory"):
        score_with_ray(ScoreConfig(db, "posts", "id", "text", tmp_path), stage_dir=tmp_path / "x")
    assert not db.exists()


def test_ray_client_addresses_are_refused_before_anything_runs(tmp_path):
    """It timed the graphs, then failed suggesting `pip install ray[client]`."""
    db = tmp_path / "market.duckdb"
    with pytest.raises(MarketpulseError, match=r"Ray Client \(ray://\) is not supported"):
        score_with_ray(ScoreConfig(db, "posts", "id", "text", tmp_path), ray_address="ray://x:1")
    with pytest.raises(MarketpulseError, match="is not supported"):  # Ray: any "://" is a client
        score_with_ray(
            ScoreConfig(db, "posts", "id", "text", tmp_path), ray_address="http://head:8265"
        )
    assert not db.exists()


def test_worker_pool_leaves_a_cpu_for_reading():
    assert plan_workers({"CPU": 2.0}, None, 0, 1) == 1
    assert plan_workers({"CPU": 16.0}, None, 0, 4) == 3
    assert plan_workers({"CPU": 16.0}, 2, 0, 4) == 2
    with pytest.raises(MarketpulseError, match="--workers 1 or fewer"):
        plan_workers({"CPU": 2.0}, 2, 0, 1)
    with pytest.raises(MarketpulseError, match="--threads 1"):
        plan_workers({"CPU": 2.0}, None, 0, 2)
    assert plan_workers({"CPU": 8.0, "GPU": 4.0}, None, 1, 1) == 4
    assert plan_workers({"CPU": 8.0, "GPU": 4.0}, None, 0.5, 1) == 8
    with pytest.raises(MarketpulseError, match="has 0 GPU"):
        plan_workers({"CPU": 8.0}, None, 1, 1)


def test_scorer_batch_equals_the_local_engine_rows(bundle, tmp_path):
    """The actor's work, run in-process: what the local engine writes for the same rows."""
    db = tmp_path / "market.duckdb"
    texts = make_source(db, 300, long_every=25)
    score(config(db, bundle, chunk_rows=300))
    scorer = Scorer(str(bundle.path), bundle.version, "fp32", "cpu", 1, 1024)
    batch = pa.table({"id": pa.array(range(300), pa.int64()), "text": pa.array(texts)})
    out, counts, reasons = split_scored(scorer(batch))
    assert out.column_names[-1] != FAILED
    got = [
        tuple(r[c] for c in RESULT_COLS.split(", "))
        for r in sorted(out.to_pylist(), key=lambda r: r["id"])
    ]
    assert_same_rows(got, rows(db))
    assert counts["scored"] + counts["skipped"] == 300 and counts["failed"] == 0
    assert counts["truncated"] > 0
    nulls = sum(t is None for t in texts)
    blanks = sum(t is not None and not t.strip() for t in texts)
    assert nulls and blanks
    assert reasons == {"null_text": nulls, "empty_text": blanks}


def test_scorer_marks_a_row_onnx_runtime_rejects_and_the_driver_leaves_it_out(bundle, monkeypatch):
    calls = poison_onnx(monkeypatch, bundle)
    scorer = Scorer(str(bundle.path), bundle.version, "fp32", "cpu", 1, 1024)
    texts = [f"row {i}: shares rally AAPL guidance" for i in range(40)]
    texts[7] = texts[30] = f"{MARKER} stampede"
    texts[9] = None
    texts[21] = texts[22] = texts[3]  # scored once, the result copied twice
    batch = pa.table({"id": pa.array(range(40), pa.int64()), "text": pa.array(texts)})
    out, counts, reasons = split_scored(scorer(batch))
    # its batch, then the text alone: once for both rows of the same text
    assert calls["poisoned"] == 2
    assert counts == {
        "scored": 37,
        "skipped": 1,
        "failed": 2,
        "truncated": 0,
        "duplicates": 2,
        "rescored": 0,  # the fp32 graph: nothing to rescore
    }
    assert reasons == {"null_text": 1}
    assert sorted(out.column("id").to_pylist()) == [i for i in range(40) if i not in (7, 30)]
    by_id = {r["id"]: r for r in out.to_pylist()}
    assert by_id[21]["p_bullish"] == by_id[22]["p_bullish"] == by_id[3]["p_bullish"]
    assert FAILED not in out.column_names and COPIED not in out.column_names


def test_scorer_refuses_a_different_bundle_version(bundle):
    with pytest.raises(MarketpulseError, match="same bundle"):
        Scorer(str(bundle.path), "0" * 16, None, "cpu", 1, 1024)


def test_ray_resumes_and_matches_the_local_engine_row_for_row(ray_cluster, bundle, tmp_path):
    local_db, ray_db = tmp_path / "local.duckdb", tmp_path / "ray.duckdb"
    make_source(local_db, N, long_every=40)
    shutil.copy(local_db, ray_db)
    local = score(config(local_db, bundle))
    assert local.status == "completed"

    # A first run that stopped after 1,000 rows; the Ray run must do exactly the rest.
    score(config(ray_db, bundle, limit=1000))
    stats = score_with_ray(config(ray_db, bundle))
    assert stats.status == "completed"
    assert stats.rows_already_scored == 1000
    assert stats.rows_scored + stats.rows_skipped == N - 1000
    assert stats.rows_failed == 0
    assert_same_rows(rows(ray_db), rows(local_db))
    con = duckdb.connect(str(ray_db), read_only=True)
    try:
        # Each Scorer call stamps its rows: the Ray rows came in chunk-sized batches.
        stamps = con.execute("SELECT count(DISTINCT scored_at) FROM scores").fetchone()[0]
        by_run = con.execute(
            "SELECT r.engine, count(*) FROM scores s JOIN runs r USING (run_id) GROUP BY ALL"
        ).fetchall()
    finally:
        con.close()
    assert stamps >= 1 + (N - 1000) // 512
    assert sorted(by_run) == [("local", 1000), ("ray", N - 1000)]  # each row names its run

    again = score_with_ray(config(ray_db, bundle))
    assert (again.status, again.rows_pending, again.rows_scored) == ("completed", 0, 0)

    history = runs(ray_db)
    assert [r[0] for r in history] == ["completed"] * 3
    assert [r[6] for r in history] == ["local", "ray", "ray"]
    ray_run = history[1]
    assert ray_run[1:3] == (stats.rows_scored, stats.rows_skipped)
    assert ray_run[4] == stats.rows_truncated > 0 and ray_run[5] == "fp32"
    assert history[0][1] + ray_run[1] == local.rows_scored
    assert history[0][4] + ray_run[4] == local.rows_truncated


def test_a_killed_runs_staged_texts_are_removed_by_the_next_ray_run(ray_cluster, bundle, tmp_path):
    """A run killed with -9 leaves its Parquet shards (raw texts) in --stage-dir; the next
    Ray run there removes them, keeps a live run's folder, and leaves nothing of its own."""
    import fcntl

    stage = tmp_path / "stage"
    dead = stage / "marketpulse-ray-0123456789ab-dead_001"  # <prefix><run id>-<mkdtemp's>
    live = stage / "marketpulse-ray-ba9876543210-live_002"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "pending-00000.parquet").write_bytes(b"raw texts")
        (folder / STAGE_OWNER).write_text("123\n")
    held = open(live / STAGE_OWNER)  # noqa: SIM115 - a live run holds its lock
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    db = tmp_path / "ray.duckdb"
    make_source(db, 300)
    try:
        stats = score_with_ray(config(db, bundle), stage_dir=stage)
    finally:
        held.close()
    assert stats.status == "completed" and stats.rows_scored + stats.rows_skipped == 300
    assert sorted(p.name for p in stage.iterdir()) == [live.name]


def test_a_failing_worker_fails_the_run_with_one_line_and_writes_nothing(
    ray_cluster, bundle, tmp_path, monkeypatch
):
    """The driver's bundle is fine; the copy the workers load is corrupt (a node out of sync)."""
    from marketpulse import bundle as bundle_module
    from marketpulse.runtime import runs

    bad = tmp_path / "bad-bundle"
    shutil.copytree(bundle.path, bad)
    with open(bad / "model.fp32.onnx", "ab") as fh:
        fh.write(b"\0")
    good = bundle_module.Bundle(path=bad, manifest=bundle.manifest)
    monkeypatch.setattr(runs, "load_bundle", lambda path: good)  # driver side only
    db = tmp_path / "market.duckdb"
    make_source(db, 300)
    with pytest.raises(MarketpulseError) as err:
        score_with_ray(config(db, bundle))
    assert "corrupt" in str(err.value) and "\n" not in str(err.value)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 0
        status, error = con.execute("SELECT status, error FROM runs").fetchone()
    finally:
        con.close()
    assert status == "failed" and "corrupt" in error


def test_input_is_cut_into_chunk_sized_blocks_as_it_streams(ray_cluster, tmp_path):
    import pyarrow.parquet as pq

    shards = [str(tmp_path / "one.parquet"), str(tmp_path / "two.parquet")]
    pq.write_table(pa.table({"id": range(3000)}), shards[0])
    pq.write_table(pa.table({"id": range(3000, 3100)}), shards[1])
    blocks = read_staged(ray_cluster, shards, 512)
    got = list(blocks.iter_batches(batch_format="pyarrow", batch_size=None))
    assert max(b.num_rows for b in got) <= 512
    assert sorted(i for b in got for i in b.column("id").to_pylist()) == list(range(3100))


def test_an_error_inside_a_ray_worker_comes_back_as_one_line(ray_cluster):
    """A Scorer raising in __call__ or in its constructor: the message survives Ray's wrapping."""

    def fail(batch):
        raise MarketpulseError("bundle is odd; re-export it")

    class FailToLoad:
        def __init__(self):
            raise MarketpulseError("bundle is missing; pass --bundle")

        def __call__(self, batch):
            return batch

    with pytest.raises(Exception) as err:
        ray_cluster.data.range(4).map_batches(fail).take_all()
    assert str(_user_error(err.value)) == "bundle is odd; re-export it"
    pool = ray_cluster.data.ActorPoolStrategy(size=1)
    with pytest.raises(Exception) as err:
        ray_cluster.data.range(4).map_batches(FailToLoad, compute=pool).take_all()
    assert str(_user_error(err.value)) == "bundle is missing; pass --bundle"
    assert _user_error(ValueError("unrelated")) is None


def run_cli(db, bundle_dir, *extra):
    from click.testing import CliRunner

    from marketpulse.cli import main

    args = ["score", "--db", str(db), "--table", "posts", "--id-col", "id", "--text-col", "text"]
    return CliRunner().invoke(main, [*args, "--bundle", str(bundle_dir), *extra])


def test_cli_without_ray_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    db = tmp_path / "market.duckdb"
    make_source(db, 10)
    result = run_cli(db, tmp_path / "no-bundle", "--engine", "ray")
    assert result.exit_code == 1
    assert "pip install 'marketpulse[ray]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert "scores" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    finally:
        con.close()


def test_cli_ray_flags_need_the_ray_engine(tmp_path):
    result = run_cli(tmp_path / "market.duckdb", tmp_path / "bundle", "--workers", "2")
    assert result.exit_code == 2
    assert "need --engine ray" in result.output


def test_cli_scores_on_ray(ray_cluster, bundle, tmp_path):
    db = tmp_path / "market.duckdb"
    make_source(db, 500)
    result = run_cli(db, bundle.path, "--engine", "ray", "--device", "cpu", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "completed: scored" in result.output
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(DISTINCT id) FROM scores").fetchone()[0] == 500
        assert con.execute("SELECT status FROM runs").fetchall() == [("completed",)]
    finally:
        con.close()


def test_the_watchdog_ends_a_wait_that_brings_nothing_and_passes_errors_through():
    never = threading.Event()

    def stuck():
        yield "first"
        never.wait(60)  # a Ray Data iterator waiting on actors that never start
        yield "late"

    got, t0 = [], time.monotonic()
    with pytest.raises(Stalled) as err:
        for item in watched(stuck, 0.5, threading.Event(), lambda: "1 of 2 rows done"):
            got.append(item)
    assert got == ["first"] and time.monotonic() - t0 < 5
    message = str(err.value)
    assert "--ray-timeout 0.5" in message and "1 of 2 rows done" in message
    assert "\n" not in message
    never.set()

    def broken():
        yield 1
        raise ValueError("lost a node")

    with pytest.raises(ValueError, match="lost a node"):
        list(watched(broken, 5, threading.Event()))
    stop = threading.Event()
    stop.set()  # SIGTERM before anything came back: stop waiting at once
    assert list(watched(stuck, 60, stop)) == []
    assert list(watched(lambda: iter(range(5)), 5, threading.Event())) == [0, 1, 2, 3, 4]


def test_a_cluster_without_free_cpus_fails_within_the_timeout_and_a_rerun_completes(
    ray_cluster, bundle, tmp_path
):
    """Another job holds every CPU: the scorer actor can never start. The run must end
    with a one-line error after --ray-timeout, not wait; once the CPUs are free again a
    rerun scores every row once."""

    @ray_cluster.remote(num_cpus=2)
    class Hog:
        def ready(self):
            return True

    hog = Hog.remote()
    ray_cluster.get(hog.ready.remote())
    db = tmp_path / "market.duckdb"
    make_source(db, 300)
    t0 = time.monotonic()
    try:
        with pytest.raises(MarketpulseError) as err:
            # 10 s: long enough for the zero-CPU file check to start a worker on a busy machine
            score_with_ray(config(db, bundle), timeout_s=10)
    finally:
        ray_cluster.kill(hog)
    assert time.monotonic() - t0 < 60
    message = str(err.value)
    assert "no scored batch came back" in message and "--ray-timeout 10" in message
    assert "\n" not in message
    assert [r[0] for r in runs(db)] == ["failed"]
    assert rows(db) == []

    again = score_with_ray(config(db, bundle))
    assert again.status == "completed" and again.rows_scored + again.rows_skipped == 300
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT id) FROM scores").fetchone() == (
            300,
            300,
        )
    finally:
        con.close()


def test_an_address_nobody_answers_at_is_one_line_before_ray_retries_for_minutes():
    """Ray retries an unreachable host:port for minutes, past --ray-timeout (user test:
    still retrying at 206 s): the port is tried first, within the timeout."""
    from marketpulse.runtime.ray_cluster import check_reachable

    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        with pytest.raises(MarketpulseError, match=r"nothing answered at 127\.0\.0\.1:1 within 5s"):
            check_reachable(address, 5)
    for address in (None, "auto", "local"):
        check_reachable(address, 5)  # Ray resolves these itself
