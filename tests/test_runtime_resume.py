"""Scoring survives `kill -9` and never loads the training stack (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import duckdb
import pytest
from test_runtime_support import make_source, spread_bundle

N = 12_000

# A real scoring process; commit_seconds=0 commits every chunk as soon as it is scored.
# With a third argument PAUSE > 0 it stops, alive, right after the commit that takes it
# past PAUSE rows and says so on stderr: the test's SIGKILL then lands mid-run however
# fast the machine scores (a run that finished first would prove nothing).
SCORER = textwrap.dedent(
    """
    import sys
    from marketpulse.runtime import ScoreConfig, score
    from marketpulse.runtime.runs import Run
    pause = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    flush = Run.flush
    def flush_then_pause(self, checkpoint=False):
        flush(self, checkpoint)
        done = self.stats.rows_scored + self.stats.rows_skipped
        if pause and done >= pause:
            print(f"paused after {done} rows", file=sys.stderr, flush=True)
            sys.stdin.read()  # until killed
    Run.flush = flush_then_pause
    score(ScoreConfig(db=sys.argv[1], table="posts", id_col="id", text_col="text",
                      bundle=sys.argv[2], device="cpu", threads=1, chunk_rows=256,
                      commit_seconds=0))
    """
)


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


def start_scorer(db, bundle, pause: int = 0):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", SCORER, str(db), str(bundle.path), str(pause)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def kill_when(proc, predicate) -> str:
    """Read stderr until a line satisfies `predicate`, then SIGKILL; return that line."""
    for line in proc.stderr:
        if predicate(line):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return line
    proc.wait(timeout=30)
    pytest.fail(f"scorer exited (code {proc.returncode}) before the kill point")


def test_kill_9_at_any_point_then_rerun_scores_every_row_exactly_once(tmp_path, bundle):
    db = tmp_path / "market.duckdb"
    texts = make_source(db, N)

    # 1: killed as soon as the model is loaded (tables being created, run row opening).
    kill_when(start_scorer(db, bundle), lambda line: "CPUExecutionProvider" in line)
    # 2 and 3: killed mid-stream, after some chunks were committed.
    for at_least in (1_000, 5_000):
        scorer = start_scorer(db, bundle, pause=at_least)
        line = kill_when(scorer, lambda s: s.startswith("paused after"))
        con = duckdb.connect(str(db), read_only=True)
        scored, runs_done = con.execute(
            "SELECT (SELECT count(*) FROM scores), "
            "(SELECT sum(rows_scored + rows_skipped) FROM runs)"
        ).fetchone()
        con.close()
        assert at_least <= scored < N, line  # really killed in the middle
        assert runs_done == scored  # run counters committed with their chunk

    final = subprocess.run(
        [sys.executable, "-c", SCORER, str(db), str(bundle.path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr
    assert "interrupted" in final.stderr  # the dead runs were closed and said so

    con = duckdb.connect(str(db), read_only=True)
    total, distinct, ids_ok = con.execute(
        "SELECT count(*), count(DISTINCT id), bool_and(id BETWEEN 0 AND ?) FROM scores", [N - 1]
    ).fetchone()
    assert (total, distinct, ids_ok) == (N, N, True)
    statuses = [r[0] for r in con.execute("SELECT status FROM runs ORDER BY started_at").fetchall()]
    assert statuses[-1] == "completed"
    assert set(statuses[:-1]) == {"interrupted"} and len(statuses) >= 3
    # Every row was counted by exactly one run, across the kills.
    assert con.execute("SELECT sum(rows_scored + rows_skipped) FROM runs").fetchone()[0] == N
    n_skipped = sum(t is None or not t.strip() for t in texts)
    assert con.execute("SELECT count(*) FROM scores WHERE label IS NULL").fetchone()[0] == n_skipped
    con.close()


def test_scoring_never_imports_torch_or_transformers(tmp_path, bundle):
    db = tmp_path / "market.duckdb"
    make_source(db, 300)
    script = textwrap.dedent(
        """
        import json, sys
        from marketpulse.cli import main
        try:
            main(["score", "--db", sys.argv[1], "--table", "posts", "--id-col", "id",
                  "--text-col", "text", "--bundle", sys.argv[2], "--device", "cpu"])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        heavy = [m for m in ("torch", "transformers", "optimum", "sklearn") if m in sys.modules]
        print(json.dumps({"heavy": heavy, "ort": "onnxruntime" in sys.modules}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(db), str(bundle.path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"heavy": [], "ort": True}
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(DISTINCT id) FROM scores").fetchone()[0] == 300
    con.close()
