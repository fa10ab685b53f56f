"""Nightly runs beside readers, real signals and a full disk, with real processes.

`marketpulse score` runs as a subprocess on the tiny bundle; other processes read the
same DuckDB file the way a dashboard or the DuckDB CLI would. The source databases
are created in DuckDB 1.x's storage format, so the DuckDB 1.x CLI can read them too.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from test_runtime_support import make_source, spread_bundle

from marketpulse.sql import create_database

MARKETPULSE = Path(sys.executable).with_name("marketpulse")

# A reader process: every 0.2 s open the file read-only (retrying a refused open, as
# `marketpulse sql` does), check it holds whole chunks only, close; until STOP exists.
POLLER = textwrap.dedent(
    """
    import json, sys, time, duckdb
    from pathlib import Path
    db, stop = sys.argv[1], Path(sys.argv[2])
    reads, longest, bad = 0, 0.0, []
    while not stop.exists():
        t0 = time.monotonic()
        while True:
            try:
                con = duckdb.connect(db, read_only=True)
                break
            except duckdb.Error as exc:
                if time.monotonic() - t0 > 60:
                    raise
                time.sleep(0.05)
        longest = max(longest, time.monotonic() - t0)
        try:
            have = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
            if "scores" in have and "runs" in have:
                n, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM scores").fetchone()
                counted = con.execute("SELECT coalesce(sum(rows_scored + rows_skipped), 0) FROM runs").fetchone()[0]
                if not n == distinct == counted:
                    bad.append((n, distinct, counted))
        finally:
            con.close()
        reads += 1
        time.sleep(0.2)
    print(json.dumps({"reads": reads, "longest_wait_s": longest, "bad": bad}))
    """
)

HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


def new_source(path: Path, n: int) -> Path:
    create_database(path)  # DuckDB 1.x's format, as the product's own files are
    make_source(path, n)
    return path


def score_cmd(db, bundle, *extra) -> list[str]:
    return [
        str(MARKETPULSE),
        "score",
        "--db",
        str(db),
        "--table",
        "posts",
        "--id-col",
        "id",
        "--text-col",
        "text",
        "--bundle",
        str(bundle.path),
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def query(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def assert_scored_once(db, n):
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM scores") == [(n, n)]
    assert query(db, "SELECT sum(rows_scored + rows_skipped) FROM runs") == [(n,)]


@pytest.mark.slow
def test_readers_poll_through_a_run_that_first_waits_for_a_reader(tmp_path, bundle):
    """A reader holds the file for 30 s as the run starts; three others poll every 0.2 s."""
    n = 50_000
    db = new_source(tmp_path / "market.duckdb", n)
    stop = tmp_path / "stop"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), "30"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "holding"
    pollers = [
        subprocess.Popen(
            [sys.executable, "-c", POLLER, str(db), str(stop)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    started = time.monotonic()
    run = subprocess.run(
        score_cmd(db, bundle, "--json"), capture_output=True, text=True, timeout=300
    )
    elapsed = time.monotonic() - started
    stop.touch()
    reports = [json.loads(p.communicate(timeout=60)[0]) for p in pollers]
    holder.wait(timeout=60)

    assert run.returncode == 0, run.stderr
    assert "waiting for another process to release" in run.stderr
    assert elapsed >= 25  # it really waited for the holder rather than failing
    assert json.loads(run.stdout)["status"] == "completed"
    assert_scored_once(db, n)
    longest = max(r["longest_wait_s"] for r in reports)
    print(
        f"\nreads: {sum(r['reads'] for r in reports)}, longest wait {longest:.3f}s, run {elapsed:.1f}s"
    )
    assert all(r["reads"] > 50 and not r["bad"] for r in reports), reports
    assert longest < 10


def signal_mid_run(proc, db, sig, past: int, total: int) -> None:
    """Send `sig` to the run once more than `past` of its `total` rows are committed.

    The count is read, and the signal sent, while this test holds the file open: the
    run cannot commit its next chunk meanwhile, so it cannot have finished (all rows
    committed) between the count and the signal, however fast it scores.
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            con = duckdb.connect(str(db), read_only=True)
        except duckdb.Error:
            time.sleep(0.01)  # the run is committing
            continue
        try:
            scored = con.execute("SELECT count(*) FROM scores").fetchone()[0]
            if scored > past:
                assert scored < total, "the run scored every row between two counts"
                proc.send_signal(sig)
                return
        except duckdb.Error:
            pass  # no scores table yet
        finally:
            con.close()
        time.sleep(0.05)
    pytest.fail(f"the run ended, or took 120 s, before it had committed {past} rows")


@pytest.mark.slow
def test_sigterm_and_sigint_commit_the_chunk_in_hand_then_a_rerun_finishes(tmp_path, bundle):
    n = 20_000
    db = new_source(tmp_path / "market.duckdb", n)
    cmd = score_cmd(db, bundle, "--chunk-rows", "256", "--commit-seconds", "0")
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        before = query(db, "SELECT count(*) FROM scores")[0][0] if sig == signal.SIGINT else 0
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        signal_mid_run(proc, db, sig, past=before + 1000, total=n)
        stderr = proc.communicate(timeout=120)[1]
        assert proc.returncode == code, stderr
        assert "Traceback" not in stderr and "stopping after the chunk in hand" in stderr
        status, counted, finished = query(
            db,
            "SELECT status, rows_scored + rows_skipped, finished_at IS NOT NULL FROM runs "
            "ORDER BY started_at DESC LIMIT 1",
        )[0]
        scored = query(db, "SELECT count(*) FROM scores")[0][0]
        assert (status, finished) == ("interrupted", True)
        assert counted == scored - before and before + 1000 < scored < n
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert_scored_once(db, n)
    statuses = [r[0] for r in query(db, "SELECT status FROM runs ORDER BY started_at")]
    assert statuses == ["interrupted", "interrupted", "completed"]


def test_a_signal_while_the_run_row_is_closed_still_closes_it(tmp_path, bundle, monkeypatch):
    """All rows are scored and the run is writing its row's end when SIGTERM comes:
    the row is still written whole ('completed'), not left 'running' by a killed process."""
    from marketpulse.runtime import ScoreConfig, results, score

    finish_run = results.finish_run

    def signalled_finish(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # handled now, in the main thread
        return finish_run(*args, **kwargs)

    def unhandled(signum, frame):  # stands in for the default, which would kill pytest
        raise AssertionError("SIGTERM reached the default handler: the run's was not installed")

    monkeypatch.setattr(results, "finish_run", signalled_finish)
    db = new_source(tmp_path / "market.duckdb", 300)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        cfg = ScoreConfig(db, "posts", "id", "text", bundle.path, threads=1, progress=False)
        stats = score(cfg)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # restored after the run
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stats.status == "completed"
    assert_scored_once(db, 300)
    assert query(db, "SELECT status, finished_at IS NOT NULL FROM runs") == [("completed", True)]


def test_a_signal_during_the_last_chunk_leaves_a_completed_run(tmp_path, bundle, monkeypatch):
    """SIGTERM arrives while the last rows are being committed: nothing is left to stop,
    so the run is 'completed' and score returns (exit 0), not 'interrupted'."""
    from marketpulse.runtime import ScoreConfig, results, score

    write_chunk = results.write_chunk

    def signalled_write(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # the run's handler: stop after this chunk
        return write_chunk(*args, **kwargs)

    monkeypatch.setattr(results, "write_chunk", signalled_write)
    db = new_source(tmp_path / "market.duckdb", 300)  # one chunk: its commit is the last
    cfg = ScoreConfig(db, "posts", "id", "text", bundle.path, threads=1, progress=False)
    stats = score(cfg)
    assert stats.status == "completed" and stats.rows_scored + stats.rows_skipped == 300
    assert_scored_once(db, 300)
    runs = query(db, "SELECT status, rows_scored + rows_skipped FROM runs")
    assert runs == [("completed", 300)]


@pytest.mark.slow
def test_a_full_disk_is_one_line_keeps_the_database_whole_and_a_rerun_finishes(tmp_path, bundle):
    n = 20_000
    db = new_source(tmp_path / "market.duckdb", n)
    limit = db.stat().st_size + 400_000  # room for a few commits, not for all of them

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = score_cmd(db, bundle, "--chunk-rows", "512", "--commit-seconds", "0")
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=small_disk)
    assert full.returncode == 1, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in full.stderr and len(errors) == 1, full.stderr
    assert "cannot write to" in errors[0] and "free disk space" in errors[0]
    # Whole chunks only, each counted by the run that committed it.
    scored, distinct = query(db, "SELECT count(*), count(DISTINCT id) FROM scores")[0]
    assert scored == distinct and 0 < scored < n
    assert query(db, "SELECT sum(rows_scored + rows_skipped) FROM runs") == [(scored,)]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_scored_once(db, n)
    assert query(db, "SELECT status FROM runs ORDER BY started_at")[-1] == ("completed",)


def test_a_second_run_on_the_same_results_is_refused_while_the_first_holds_them(tmp_path, bundle):
    from marketpulse.runtime.database import Database

    db = new_source(tmp_path / "market.duckdb", 100)
    other = Database(db, None, "128MB", 5, "v1.0.0")
    with other.run_lock():
        run = subprocess.run(score_cmd(db, bundle), capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "another `marketpulse score` is writing to" in run.stderr
    assert "scores" not in {r[0] for r in query(db, "SHOW TABLES")}


def test_sql_command_reads_while_a_writer_commits_and_prints_json_and_csv(tmp_path):
    from click.testing import CliRunner

    from marketpulse.cli import main

    db = new_source(tmp_path / "market.duckdb", 10)
    # A writer holds the file for 1.5 s; `marketpulse sql` waits it out.
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); "
            "print('open', flush=True); time.sleep(1.5); con.close()",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().strip() == "open"
    sql = "SELECT id, lang FROM posts WHERE id < 2 ORDER BY id"
    started = time.monotonic()
    result = CliRunner().invoke(main, ["sql", sql, "--db", str(db), "--json"])
    writer.wait(timeout=30)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 1.0
    assert json.loads(result.stdout) == [{"id": 0, "lang": "en"}, {"id": 1, "lang": "de"}]
    csv_out = CliRunner().invoke(main, ["sql", sql, "--db", str(db), "--csv"])
    assert csv_out.stdout.splitlines() == ["id,lang", "0,en", "1,de"]
    # Read-only: a write is a one-line error and changes nothing.
    bad = CliRunner().invoke(main, ["sql", "DELETE FROM posts", "--db", str(db)])
    assert bad.exit_code == 1 and "read-only" in bad.output
    assert query(db, "SELECT count(*) FROM posts") == [(10,)]
    timeout = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); "
            "print('open', flush=True); time.sleep(5); con.close()",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert timeout.stdout.readline().strip() == "open"
    late = CliRunner().invoke(main, ["sql", sql, "--db", str(db), "--lock-timeout", "0.5"])
    timeout.kill()
    timeout.wait()
    assert late.exit_code == 1 and "raise --lock-timeout" in late.output


def test_storage_version_is_checked(tmp_path, bundle):
    from marketpulse.errors import MarketpulseError

    with pytest.raises(MarketpulseError, match="invalid storage version"):
        create_database(tmp_path / "x.duckdb", "v1; DROP TABLE x")
    db = new_source(tmp_path / "market.duckdb", 50)
    out = tmp_path / "latest.duckdb"
    run = subprocess.run(
        score_cmd(db, bundle, "--results-db", str(out), "--storage-version", "latest"),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert run.returncode == 0, run.stderr
    con = duckdb.connect()
    con.execute(f"ATTACH '{out}' AS r (READ_ONLY)")
    tags = con.execute("SELECT tags FROM duckdb_databases() WHERE database_name = 'r'").fetchone()
    assert not tags[0]["storage_version"].startswith("v1.")


def test_the_duckdb_1x_cli_reads_what_the_product_writes(tmp_path, bundle):
    """scores, runs, latest_scores and a trend table, from the DuckDB 1.x CLI (duckdb-cli)."""
    from click.testing import CliRunner

    from marketpulse.cli import main

    cli = Path(sys.executable).with_name("duckdb")
    if not cli.exists():
        pytest.skip("the duckdb-cli package (the dev extra) is not installed")
    db = new_source(tmp_path / "market.duckdb", 300)
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE posts ADD COLUMN posted_at TIMESTAMP")
    con.execute(
        "UPDATE posts SET posted_at = TIMESTAMP '2026-01-05' + to_days(CAST(id // 10 AS INTEGER))"
    )
    con.close()
    assert subprocess.run(score_cmd(db, bundle), capture_output=True, timeout=120).returncode == 0
    trends = CliRunner().invoke(
        main,
        [
            "trends",
            "--db",
            str(db),
            "--source",
            "posts",
            "--id-col",
            "id",
            "--time-col",
            "posted_at",
            "--by",
            "lang",
        ],
    )
    assert trends.exit_code == 0, trends.output
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True).stdout
    assert version.startswith("v1."), version
    sql = (
        "SELECT (SELECT count(*) FROM scores), (SELECT count(*) FROM runs), "
        "(SELECT count(*) FROM latest_scores), (SELECT sum(volume) FROM trend_posts_week)"
    )
    out = subprocess.run(
        [str(cli), "-readonly", "-csv", "-noheader", str(db), "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    n_labeled = query(db, "SELECT count(*) FROM scores WHERE label IS NOT NULL")[0][0]
    assert out.stdout.strip() == f"300,1,300,{n_labeled}"


WRITER = HOLDER.replace("read_only=True", "read_only=False")


def test_a_source_a_writer_holds_is_waited_for_beside_a_results_db(tmp_path, bundle):
    db = new_source(tmp_path / "src.duckdb", 50)
    results = tmp_path / "results.duckdb"
    for hold, timeout in ((60, "2"), (4, "60")):  # outlasts --lock-timeout, then does not
        holder = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(hold)], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout.readline().strip() == "holding"
        extra = ("--results-db", str(results), "--lock-timeout", timeout)
        run = subprocess.run(score_cmd(db, bundle, *extra), capture_output=True, text=True)
        holder.kill() if hold == 60 else holder.wait(timeout=60)
        holder.wait(timeout=60)
        if hold == 60:
            assert run.returncode == 1
            error = run.stderr.strip().splitlines()[-1]
            assert error.startswith(f"Error: {db} stayed locked by a writer for ")
            assert error.endswith("close the process that writes it, or raise --lock-timeout")
            assert "See also" not in error
            assert not results.exists()  # nothing made
        else:
            assert run.returncode == 0, run.stderr
            assert "waiting for another process to release" in run.stderr
            assert query(results, "SELECT count(*) FROM scores") == [(50,)]
