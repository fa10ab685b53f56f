"""A view's rows are staged to Parquet beside the results file; a run killed with
SIGKILL cannot remove that folder, so a later run removes it, and only folders whose
run is dead (database.py: `staging_dir`, `remove_stale_staging`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner
from test_runtime_support import make_source

from marketpulse.cli import main
from marketpulse.owned_folders import STAGE_OWNER
from marketpulse.runtime.database import STAGE_PREFIX, Database
from marketpulse.sql import DEFAULT_STORAGE_VERSION

N = 120

# `marketpulse score` on a view, stuck in the first batch it infers: by then the view's
# rows are staged (all of them, before any is read back), as in the user's kill -9.
STUCK_SCORE = """
import sys, time
from pathlib import Path
from marketpulse.inference.predictor import Predictor
from marketpulse.runtime import ScoreConfig, score

class Stuck(Predictor):
    def run(self, input_ids, attention_mask):
        Path(sys.argv[3]).touch()
        time.sleep(600)

cfg = ScoreConfig(db=sys.argv[1], table="english", id_col="id", text_col="text",
                  bundle=sys.argv[2], device="cpu", variant="fp32", progress=False)
score(cfg, predictor_type=Stuck)
"""


def staging_folders(folder: Path) -> list[Path]:
    return sorted(folder.glob(STAGE_PREFIX + "*"))


def database(path: Path) -> Database:
    return Database(path, None, "256MB", 1.0, DEFAULT_STORAGE_VERSION)


def score_cli(db: Path, bundle: Path, table: str = "english"):
    """`marketpulse score` of `table` in `db` with the fp32 graph, through the CLI."""
    return CliRunner().invoke(
        main,
        ["score", "--db", str(db), "--table", table, "--id-col", "id", "--text-col", "text"]
        + ["--bundle", str(bundle), "--device", "cpu", "--variant", "fp32"],
    )


def view_source(db: Path) -> None:
    make_source(db, N)
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE VIEW english AS SELECT * FROM posts WHERE lang = 'en'")


def kill_score_while_streaming(db: Path, bundle: Path, tmp_path: Path) -> Path:
    """Start `score` on the view in another process, SIGKILL it mid-run; its staging folder."""
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_SCORE, str(db), str(bundle), str(started)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "score never reached its first batch"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    (left,) = staging_folders(db.parent)
    return left


def test_a_killed_runs_staging_folder_is_removed_and_a_live_runs_kept(tiny_bundle, tmp_path):
    db = tmp_path / "market.duckdb"
    view_source(db)
    left = kill_score_while_streaming(db, tiny_bundle.path, tmp_path)
    # what the user found: the view's raw texts, left for good
    assert (left / "pending-00000.parquet").is_file()
    assert pq.read_table(left / "pending-00000.parquet").num_rows == N // 2
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("running",)]

    # another database in the same folder is scoring a view right now: its folder stays
    with database(tmp_path / "other.duckdb").staging_dir() as live:
        pq.write_table(pa.table({"id": [1], "text": ["x"]}), live / "pending-00000.parquet")
        result = score_cli(db, tiny_bundle.path)
        assert result.exit_code == 0, result.output
        assert "marked 1 run(s) left 'running' by a killed process as interrupted" in result.output
        assert (
            f"removed 1 stale staging folder(s) of interrupted runs in {tmp_path}" in result.output
        )
        assert not left.exists()
        assert staging_folders(tmp_path) == [live]  # and this run removed its own
        assert (live / "pending-00000.parquet").is_file() and (live / STAGE_OWNER).is_file()
        assert (live / STAGE_OWNER).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert staging_folders(tmp_path) == []
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute("SELECT status FROM runs ORDER BY started_at").fetchall()
        scored = con.execute("SELECT count(*), bool_and(id % 2 = 0) FROM scores").fetchall()
    assert runs == [("interrupted",), ("completed",)]
    assert scored == [(N // 2, True)]

    # nothing left to remove: the next run says nothing about staging
    result = score_cli(db, tiny_bundle.path)
    assert result.exit_code == 0, result.output
    assert "staging folder" not in result.output


def older_staging_folder(folder: Path) -> Path:
    """A folder as marketpulse made it before the owner lock: mkdtemp, then the shards."""
    made = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=folder))
    pq.write_table(pa.table({"id": [1], "text": ["raw text"]}), made / "pending-00000.parquet")
    return made


def test_an_older_markerless_folder_goes_only_when_no_other_database_can_own_it(
    tiny_bundle, tmp_path
):
    """Without an owner lock the folder's run cannot be asked; it was made by a run holding
    a run lock in that folder, so when the only lock there is this database's (held by
    this run), its run is dead; with another database's lock beside it, it is kept."""
    db = tmp_path / "market.duckdb"
    make_source(db, 3)
    mine = database(db)
    made = older_staging_folder(tmp_path)
    with mine.run_lock():
        assert mine.remove_stale_staging() == (1, 0)
    assert not made.exists()

    made = older_staging_folder(tmp_path)
    make_source(tmp_path / "other.duckdb", 3)
    other = database(tmp_path / "other.duckdb")
    with other.run_lock():  # another database's run (lock file) in the same folder
        pass
    with mine.run_lock():
        assert mine.remove_stale_staging() == (0, 1)
    assert (made / "pending-00000.parquet").is_file()

    # the same, through `score`: the run says so and how to clear it
    result = score_cli(db, tiny_bundle.path, table="posts")
    assert result.exit_code == 0, result.output
    assert (
        f"kept 1 staging folder(s) of an older marketpulse in {tmp_path} (.marketpulse-stage-*)"
        in result.output
    )
    assert "remove them by hand once no `marketpulse score` runs" in result.output
    assert (made / "pending-00000.parquet").is_file()


def test_the_sweep_leaves_a_folder_whose_owner_is_alive_in_this_process(tmp_path):
    """flock locks belong to an open file: even this process's own live folder is kept,
    and once it ends the folder is gone with it."""
    db = tmp_path / "market.duckdb"
    make_source(db, 3)
    mine = database(db)
    with mine.staging_dir() as live:
        assert live.name.startswith(STAGE_PREFIX)
        with mine.run_lock():
            assert mine.remove_stale_staging() == (0, 0)
        assert live.is_dir()
    assert not live.exists() and staging_folders(tmp_path) == []


def test_only_this_hosts_dead_folders_are_swept(tmp_path):
    """On a shared folder another host's flock may not show here: its folders are kept."""
    from marketpulse.owned_folders import STAGE_OWNER, remove_dead_folders

    for name, owner in (
        ("x-here_000", socket.gethostname()),
        ("x-there_00", "other-host"),
        ("x-old_0000", None),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / STAGE_OWNER).write_text(f"123 {owner}\n" if owner else "123\n")
    assert remove_dead_folders(tmp_path, "x-") == (2, 0)  # not "kept": not ours to judge
    assert [p.name for p in tmp_path.iterdir()] == ["x-there_00"]
