"""A `marketpulse score` run that fails leaves the folder as it found it.

A new `--results-db` is made by the run's first write only, and a run that fails
before its first commit removes what it made (the results file, its write-ahead log,
the lock file); a file that was there before the run, or one holding a commit, stays
(runtime/database.py, `Database.run_lock`). Real DuckDB files throughout.
"""

from __future__ import annotations

import fcntl
import shutil

import duckdb
import pytest
from click.testing import CliRunner
from test_runtime_support import make_source, spread_bundle

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.inference.predictor import cuda_provider_available
from marketpulse.runtime import ScoreConfig, results, score
from marketpulse.runtime.database import Database
from marketpulse.sql import DEFAULT_STORAGE_VERSION

BAD_VIEW = (
    "CREATE VIEW badv AS SELECT id, CASE WHEN id = 300 THEN CAST(CAST(lang AS INTEGER) "
    "AS VARCHAR) ELSE text END AS text, lang FROM posts"
)


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


@pytest.fixture
def folder(tmp_path):
    """A folder holding the source file market.duckdb (posts, 600 rows) and nothing else."""
    make_source(tmp_path / "market.duckdb", 600)
    return tmp_path


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run_cli(folder, bundle_path, *extra):
    args = ["score", "--db", str(folder / "market.duckdb"), "--table", "posts"]
    args += ["--id-col", "id", "--text-col", "text", "--bundle", str(bundle_path)]
    return CliRunner().invoke(main, [*args, *extra])


def tables(db) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0] for r in con.execute("SHOW TABLES").fetchall()}


def corrupt_copy(bundle, folder_for_it):
    broken = folder_for_it / "bundle"
    shutil.copytree(bundle.path, broken)
    with open(broken / "model.int8.onnx", "ab") as fh:
        fh.write(b"junk")
    return broken


CASES = {
    "missing column": (["--text-col", "body"], "column 'body' not found in table 'posts'"),
    "missing table": (["--table", "nope"], "table 'nope' not found in --db"),
    "bad filter": (["--where", "secret > 0"], "column 'secret', which the source table lacks"),
    "graph not in bundle": (["--variant", "fp16"], "has no 'fp16' graph"),
    "unknown storage version": (["--storage-version", "v9.9.9"], "with storage version v9.9.9"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_that_fails_early_leaves_no_new_results_file_or_lock(folder, bundle, case):
    extra, message = CASES[case]
    before = listing(folder)
    result = run_cli(
        folder, bundle.path, "--device", "cpu", "--results-db", str(folder / "new.duckdb"), *extra
    )
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert listing(folder) == before  # no new.duckdb, .wal or .marketpulse.lock


@pytest.mark.skipif(cuda_provider_available(), reason="this machine has a CUDA provider")
def test_a_wrong_device_leaves_no_new_results_file(folder, bundle):
    """The device is tried after the checks, once the run lock is held."""
    before = listing(folder)
    result = run_cli(
        folder, bundle.path, "--device", "cuda", "--results-db", str(folder / "new.duckdb")
    )
    assert result.exit_code == 1
    assert "--device cuda but onnxruntime has no CUDA provider" in result.output
    assert listing(folder) == before


def test_a_corrupt_bundle_leaves_no_new_results_file(folder, bundle, tmp_path_factory):
    broken = corrupt_copy(bundle, tmp_path_factory.mktemp("broken"))
    before = listing(folder)
    result = run_cli(folder, broken, "--device", "cpu", "--results-db", str(folder / "new.duckdb"))
    assert result.exit_code == 1 and "sha256 mismatch" in result.output
    assert listing(folder) == before


def test_without_results_db_a_failed_run_leaves_no_lock_beside_the_source(folder, bundle):
    before = listing(folder)
    result = run_cli(folder, bundle.path, "--device", "cpu", "--text-col", "body")
    assert result.exit_code == 1
    assert listing(folder) == before
    assert tables(folder / "market.duckdb") == {"posts"}


def test_files_that_were_there_before_a_failed_run_stay(folder, bundle):
    """An existing results file (and, after a run, its lock file) is never removed; a lock
    file the failed run made beside an existing results file is."""
    existing = folder / "old.duckdb"
    with duckdb.connect(str(existing)) as con:
        con.execute("CREATE TABLE notes AS SELECT 1 AS n")
    result = run_cli(folder, bundle.path, "--device", "cpu", "--results-db", str(existing), "--text-col", "body")  # fmt: skip
    assert result.exit_code == 1
    assert listing(folder) == ["market.duckdb", "old.duckdb"]
    assert tables(existing) == {"notes"}

    done = run_cli(folder, bundle.path, "--device", "cpu", "--results-db", str(existing), "--limit", "5")  # fmt: skip
    assert done.exit_code == 0, done.output
    before = listing(folder)
    assert "old.duckdb.marketpulse.lock" in before
    result = run_cli(folder, bundle.path, "--device", "cpu", "--results-db", str(existing), "--table", "nope")  # fmt: skip
    assert result.exit_code == 1
    assert listing(folder) == before
    assert tables(existing) == {"notes", "scores", "runs", "models"}


def test_a_run_that_fails_after_its_run_row_is_written_keeps_the_file_that_says_so(folder, bundle):
    """Something was written: the new file stays, with the failed run's row."""
    with duckdb.connect(str(folder / "market.duckdb")) as con:
        con.execute(BAD_VIEW)
    result = run_cli(folder, bundle.path, "--device", "cpu", "--variant", "fp32", "--table", "badv", "--results-db", str(folder / "new.duckdb"))  # fmt: skip
    assert result.exit_code == 1
    assert "reading the rows of 'badv' failed" in result.output
    out = folder / "new.duckdb"
    with duckdb.connect(str(out), read_only=True) as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("failed",)]
    assert (folder / "new.duckdb.marketpulse.lock").exists()


def test_a_first_write_that_fails_removes_the_file_it_made(folder, bundle, monkeypatch):
    """The results file is made by the first write; when that write fails before it
    commits, the file (and its write-ahead log) goes too."""

    def refuse(con, run):
        raise MarketpulseError("the run row cannot be written")

    monkeypatch.setattr(results, "start_run", refuse)
    before = listing(folder)
    cfg = ScoreConfig(db=folder / "market.duckdb", table="posts", id_col="id", text_col="text", bundle=bundle.path, results_db=folder / "new.duckdb", device="cpu", variant="fp32", progress=False)  # fmt: skip
    with pytest.raises(MarketpulseError, match="the run row cannot be written"):
        score(cfg)
    assert listing(folder) == before


def test_a_successful_run_makes_the_results_file_in_the_chosen_format(folder, bundle):
    result = run_cli(folder, bundle.path, "--device", "cpu", "--results-db", str(folder / "new.duckdb"), "--limit", "5")  # fmt: skip
    assert result.exit_code == 0, result.output
    con = duckdb.connect()
    con.execute(f"ATTACH '{folder / 'new.duckdb'}' AS r (READ_ONLY)")
    tags = con.execute("SELECT tags FROM duckdb_databases() WHERE database_name = 'r'").fetchone()
    con.close()
    assert tags[0]["storage_version"].startswith(DEFAULT_STORAGE_VERSION)


def test_a_lock_file_removed_while_another_run_opened_it_is_made_again(folder, monkeypatch):
    """Run A made the lock file and fails; run B had opened that file just before A
    removed it, and locks it once A lets go. B must not run on the removed file while a
    third run takes a new one: it opens the lock file again, and the third is refused."""
    db = folder / "market.duckdb"
    a, b, c = (Database(db, None, "128MB", 1.0, DEFAULT_STORAGE_VERSION) for _ in range(3))
    a_lock = a.run_lock()
    a_lock.__enter__()  # A made the lock file and holds it
    real_flock, calls = fcntl.flock, []

    def flock(handle, operation):
        calls.append(operation)
        if len(calls) == 1:  # B has the file open; A fails now and removes it
            assert a_lock.__exit__(RuntimeError, RuntimeError("A failed"), None) is False
            assert not a.lock_path.exists()
        return real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with b.run_lock():
        assert len(calls) == 2  # B locked the removed file, saw it, and locked the new one
        assert b.lock_path.exists()
        with pytest.raises(MarketpulseError, match="another `marketpulse score` is writing"):
            with c.run_lock():
                pass
    assert b.lock_path.exists()  # B made it, and its run ended without an error


def test_a_results_db_whose_lock_cannot_be_made_is_one_line(folder, bundle):
    """A link to a file in a missing folder: the lock goes beside the link's target, which
    cannot be made; one line naming the fix, not a traceback, and nothing left."""
    link = folder / "out.duckdb"
    link.symlink_to(folder / "gone" / "out.duckdb")
    before = listing(folder)
    result = run_cli(folder, bundle.path, "--results-db", str(link))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "cannot open the run lock" in result.output and "--results-db" in result.output
    assert listing(folder) == before


def test_a_results_db_named_src_scores_and_the_alias_name_is_refused(folder, bundle):
    """The source is attached beside the results under SOURCE_ALIAS; a results file's
    catalog is its stem, so `src.duckdb` (the alias once) must work, and the one stem
    that collides is refused in one line before anything is made."""
    from marketpulse.runtime.source import SOURCE_ALIAS

    result = run_cli(folder, bundle.path, "--results-db", str(folder / "src.duckdb"))
    assert result.exit_code == 0, result.output
    assert "scores" in tables(folder / "src.duckdb")
    before = listing(folder)
    result = run_cli(folder, bundle.path, "--results-db", str(folder / f"{SOURCE_ALIAS}.duckdb"))
    assert result.exit_code != 0 and "give the results file another name" in result.output
    assert listing(folder) == before


def test_the_file_s_own_catalog_name_before_a_table_is_the_same_table(folder, bundle):
    """In market.duckdb, `market.posts` and `market.main.posts` are `posts` as DuckDB binds
    them: scoring under either spelling adds to posts' results instead of being refused as
    another table's (trends judges its --source by the same rule, scored_this_source)."""
    db = str(folder / "market.duckdb")
    base = ["--id-col", "id", "--text-col", "text", "--bundle", str(bundle.path)]
    first = CliRunner().invoke(
        main, ["score", "--db", db, "--table", "posts", "--limit", "100", *base]
    )
    assert first.exit_code == 0, first.output
    for spelled in ("market.posts", "MARKET.main.posts"):
        again = CliRunner().invoke(main, ["score", "--db", db, "--table", spelled, "--limit", "100", *base])  # fmt: skip
        assert again.exit_code == 0, again.output
    other = CliRunner().invoke(main, ["score", "--db", db, "--table", "other.posts", *base])
    assert "already holds the scores of table" not in other.output  # no such schema: DuckDB says so
    with duckdb.connect(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 300


def test_beside_a_results_db_a_schema_named_like_the_file_is_another_table(folder, bundle):
    """With --results-db the source is attached under an alias, so `market.posts` there is
    schema market's table, not main.posts: its scores must not be taken for posts' (review)."""
    db = str(folder / "market.duckdb")
    with duckdb.connect(db) as con:
        con.execute("CREATE SCHEMA market")
        con.execute("CREATE TABLE market.market.posts AS FROM main.posts LIMIT 50")
    out = str(folder / "results.duckdb")
    base = ["--id-col", "id", "--text-col", "text", "--bundle", str(bundle.path), "--results-db", out]  # fmt: skip
    first = CliRunner().invoke(main, ["score", "--db", db, "--table", "posts", "--limit", "40", *base])  # fmt: skip
    assert first.exit_code == 0, first.output
    other = CliRunner().invoke(main, ["score", "--db", db, "--table", "market.posts", *base])
    assert other.exit_code != 0 and "already holds the scores of table 'posts'" in other.output
