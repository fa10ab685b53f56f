"""`--engine ray` on a real multi-node cluster on one machine, on a busy machine, and
with a worker lost mid-run.

The cluster is Ray's own `ray.cluster_utils.Cluster`: a head raylet with no CPUs (so
every actor and read task runs on a worker node, as on a real cluster) and worker
raylets added per test. It lives in a private RAY_TMPDIR, so its address file never
makes another `ray.init()` on this machine join it, and every node is killed in
teardown. All tests here are `slow`: each starts Ray processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest
from test_ray_engine import assert_same_rows, config, rows, runs
from test_runtime_support import make_source, spread_bundle

from marketpulse.errors import MarketpulseError
from marketpulse.runtime import score
from marketpulse.runtime.ray_engine import score_with_ray

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'marketpulse[ray]'")


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs) + one 2-CPU worker node, as separate raylets."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a module before this one left its local cluster up
        ray.shutdown()
    # Short: Ray's socket paths live under it and must stay under 108 bytes.
    tmp = tempfile.mkdtemp(prefix="mpray-", dir="/tmp")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TMPDIR", tmp)
    node_args = {"include_dashboard": False, "object_store_memory": 80 * 1024**2}
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **node_args})
    try:
        made.add_node(num_cpus=2, **node_args)
        made.node_args = node_args
        yield made
    finally:
        if ray.is_initialized():
            ray.shutdown()
        made.shutdown()
        mp.undo()
        shutil.rmtree(tmp, ignore_errors=True)


def scores_once(db) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        total, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM scores").fetchone()
    finally:
        con.close()
    assert total == distinct  # nothing scored twice
    return total


def test_two_nodes_give_the_local_engines_rows_and_a_rerun_scores_nothing(
    cluster, bundle, tmp_path
):
    local_db, ray_db = tmp_path / "local.duckdb", tmp_path / "ray.duckdb"
    make_source(local_db, 1500, long_every=40)
    shutil.copy(local_db, ray_db)
    assert score(config(local_db, bundle)).status == "completed"

    stats = score_with_ray(config(ray_db, bundle, chunk_rows=256), ray_address=cluster.address)
    assert stats.status == "completed" and stats.rows_failed == 0
    assert stats.rows_scored + stats.rows_skipped == 1500
    assert_same_rows(rows(ray_db), rows(local_db))
    assert not ray.is_initialized()  # the engine connected, and disconnected after

    again = score_with_ray(config(ray_db, bundle), ray_address=cluster.address)
    assert (again.status, again.rows_pending, again.rows_scored) == ("completed", 0, 0)
    assert [r[0] for r in runs(ray_db)] == ["completed", "completed"]
    assert scores_once(ray_db) == 1500


def test_a_node_that_cannot_read_the_stage_dir_is_named_before_anything_runs(
    cluster, bundle, tmp_path
):
    """A worker node whose own filesystem hides the stage dir (an empty tmpfs mounted
    over it in the node's mount namespace): the one-line error names that node."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to give one Ray node its own mounts")
    stage = tmp_path / "stage"
    stage.mkdir()
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "none", str(stage)],
        capture_output=True,
    )
    if probe.returncode:
        pytest.skip(f"cannot mount in a new namespace here: {probe.stderr.decode()[:100]}")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    node = subprocess.Popen(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs none {stage} && exec {ray_bin} start --block "
            f"--address={cluster.address} --num-cpus=1 --object-store-memory={80 * 1024**2} "
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        deadline = time.monotonic() + 90
        while len([n for n in ray.nodes() if n["Alive"]]) < 3:
            assert time.monotonic() < deadline, "the namespaced node never joined"
            time.sleep(0.5)
        db = tmp_path / "market.duckdb"
        make_source(db, 200)
        with pytest.raises(MarketpulseError) as err:
            score_with_ray(config(db, bundle), stage_dir=stage)
        message = str(err.value)
        assert "cannot read --stage-dir" in message and "\n" not in message
        assert rows(db) == [] and [r[0] for r in runs(db)] == ["failed"]
    finally:
        ray.shutdown()
        os.killpg(node.pid, signal.SIGTERM)  # `ray start --block` stops its raylet
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def _kill_mid_run(monkeypatch, kill):
    """Call `kill()` once, right after the first scored batch is committed."""
    from marketpulse.runtime import runs as runs_module

    real_flush, done = runs_module.Run.flush, []

    def flush(self, checkpoint=False):
        real_flush(self, checkpoint)
        if not done and self.stats.rows_scored:
            done.append(kill())

    monkeypatch.setattr(runs_module.Run, "flush", flush)
    return done


def test_a_worker_node_killed_mid_run_loses_and_duplicates_nothing(
    cluster, bundle, tmp_path, monkeypatch
):
    """A second worker node dies (raylet and its workers SIGKILLed) after the first
    commit. Ray Data retries the lost work on the surviving node, or the run fails with
    one line and a rerun completes it: either way every row is scored exactly once."""
    doomed = cluster.add_node(num_cpus=1, **cluster.node_args)
    db = tmp_path / "market.duckdb"
    make_source(db, 2000)
    raylet = doomed.all_processes["raylet"][0].process

    def kill_the_node():
        cluster.remove_node(doomed, allow_graceful=False)
        return raylet.poll() is not None  # True once the node's raylet is really gone

    killed = _kill_mid_run(monkeypatch, kill_the_node)
    try:
        first = score_with_ray(
            config(db, bundle, chunk_rows=128, commit_seconds=0),
            ray_address=cluster.address,
            workers=2,
            timeout_s=20,
        )
        outcome = first.status
    except MarketpulseError as exc:
        assert "\n" not in str(exc)
        outcome = f"failed: {exc}"
    assert killed == [True]
    monkeypatch.undo()
    if outcome != "completed":
        rerun = score_with_ray(config(db, bundle), ray_address=cluster.address)
        assert rerun.status == "completed"
    assert scores_once(db) == 2000
    print(f"worker node killed mid-run: first run {outcome}")


def test_the_node_check_skips_a_node_that_died_but_is_still_listed(cluster, tmp_path, monkeypatch):
    """A SIGKILLed node stays listed alive until its heartbeat times out: the file check
    must skip it (not raise Ray's own error) and size the pool on the nodes that answered.
    The node list is taken before the kill, so the check always sees the dead node."""
    from marketpulse.runtime import ray_cluster

    doomed = cluster.add_node(num_cpus=1, **cluster.node_args)
    ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        listed = ray_cluster.scoring_nodes(ray, 0)
        assert len(listed) == 2
        cluster.remove_node(doomed, allow_graceful=False)
        monkeypatch.setattr(ray_cluster, "scoring_nodes", lambda ray, gpus: listed)
        shared = tmp_path / "shared.txt"
        shared.write_text("seen by every node")
        lines = []
        live = ray_cluster.check_nodes_read(
            ray, {"--bundle": shared}, timeout_s=60, log=lines.append
        )
    finally:
        ray.shutdown()
    assert live["CPU"] == 2  # the surviving worker node only; the head has none
    assert len(lines) == 1 and "left the cluster; not scoring on it" in lines[0]


def test_an_actor_process_killed_mid_run_loses_and_duplicates_nothing(
    cluster, bundle, tmp_path, monkeypatch
):
    import psutil

    def kill_an_actor():
        raylets = {n.all_processes["raylet"][0].process.pid for n in cluster.worker_nodes}
        for proc in psutil.process_iter(["cmdline", "ppid"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith("ray::MapWorker") and proc.info["ppid"] in raylets:
                proc.kill()
                return True
        return False

    db = tmp_path / "market.duckdb"
    # 10,000 rows: the actor still has work when the first commit calls kill(), even
    # when the driver is slow to commit (2,000 left it little more than 0.2 s)
    make_source(db, 10_000)
    killed = _kill_mid_run(monkeypatch, kill_an_actor)
    try:
        outcome = score_with_ray(
            config(db, bundle, chunk_rows=128, commit_seconds=0),
            ray_address=cluster.address,
            timeout_s=20,
        ).status
    except MarketpulseError as exc:
        assert "\n" not in str(exc)
        outcome = f"failed: {exc}"
    assert killed == [True]
    monkeypatch.undo()
    if outcome != "completed":
        assert score_with_ray(config(db, bundle), ray_address=cluster.address).status == (
            "completed"
        )
    assert scores_once(db) == 10_000
    print(f"actor process killed mid-run: first run {outcome}")


def test_a_run_beside_two_busy_loops_completes(bundle, tmp_path):
    """The issue's stall: 500 rows, a fresh local cluster, two processes spinning on the
    2 cores. It must complete, or fail with the watchdog's one line (a machine busier
    still), never hang; after such a failure a rerun on the freed cores completes."""
    db = tmp_path / "market.duckdb"
    make_source(db, 500)
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="mpray-", dir="/tmp")}
    spin = "while True: pass"  # until killed below
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    cli = Path(sys.executable).with_name("marketpulse")
    args = ["score", "--db", str(db), "--table", "posts", "--id-col", "id", "--text-col", "text"]
    cmd = [str(cli), *args, "--bundle", str(bundle.path), "--engine", "ray", "--ray-timeout", "150"]
    t0 = time.monotonic()
    try:
        # 400 s: the watchdog's 150 s, its grace, and Ray's start on two busy cores
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    seconds = time.monotonic() - t0
    try:
        if done.returncode != 0:
            assert "Traceback" not in done.stderr, done.stderr[-2000:]
            assert "no scored batch came back" in done.stderr, done.stderr[-2000:]
            again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
            assert again.returncode == 0, again.stderr[-2000:]
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert scores_once(db) == 500
    outcome = "completed" if done.returncode == 0 else "watchdog's line, then a rerun completed"
    print(f"500 rows beside two busy loops: {seconds:.0f}s, {outcome}")


def test_joining_ray_keeps_the_run_s_sigterm_handler():
    """ray.init puts its own SIGTERM handler (exit at once, the run row left 'failed' with
    error '15') in place of the run's graceful stop; connect puts the run's back (user test)."""
    import signal

    from marketpulse.runtime.ray_cluster import connect

    def graceful(signum, frame):
        pass

    if ray.is_initialized():
        ray.shutdown()
    previous = signal.signal(signal.SIGTERM, graceful)
    try:
        assert connect(ray, None, lambda line: None) is True
        assert signal.getsignal(signal.SIGTERM) is graceful
    finally:
        if ray.is_initialized():
            ray.shutdown()
        signal.signal(signal.SIGTERM, previous)
