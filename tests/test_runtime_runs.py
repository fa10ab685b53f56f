"""How a run ends, on real DuckDB files: a row ONNX Runtime rejects, a run that fails or
is interrupted mid-stream, and a second model with other labels on the same table.

ONNX Runtime is made to fail by `poison_onnx` (test_runtime_support.py): the predictor's
own retry, the window code and the run record then handle it as a real failure.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading

import duckdb
import numpy as np
import pytest
from test_runtime_support import MARKER, make_source, poison_onnx, spread_bundle

from marketpulse.errors import MarketpulseError
from marketpulse.runtime import ScoreConfig, results, score

N = 600


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


def config(db, bundle, **kw) -> ScoreConfig:
    base = dict(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path)
    base.update(device="cpu", threads=1, chunk_rows=100, progress=False, commit_seconds=0)
    return ScoreConfig(**{**base, **kw})


def query(db, sql, params=None):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def set_texts(db, ids, text):
    con = duckdb.connect(str(db))
    con.execute("UPDATE posts SET text = ? WHERE list_contains(?, id)", [text, list(ids)])
    con.close()


@pytest.fixture
def poisoned_onnx(bundle, monkeypatch):
    return poison_onnx(monkeypatch, bundle)


def test_a_row_onnx_runtime_rejects_is_retried_alone_counted_failed_and_rerun(
    bundle, tmp_path, poisoned_onnx, monkeypatch
):
    db = tmp_path / "market.duckdb"
    texts = make_source(db, N)
    bad = [10, 250, 421]
    set_texts(db, bad, f"{MARKER} stampede hits the trading floor")

    stats = score(config(db, bundle))
    assert stats.status == "completed"
    assert stats.rows_failed == 3
    skipped = sum(t is None or not t.strip() for t in texts)
    assert (stats.rows_scored, stats.rows_skipped) == (N - 3 - skipped, skipped)
    # Each bad row sank its batch once and failed again alone: two calls per bad row.
    assert poisoned_onnx["poisoned"] == 2 * len(bad)
    # Its batch mates were retried one by one and scored; the bad rows were not written.
    assert query(db, "SELECT count(*), count(label) FROM scores") == [(N - 3, N - 3 - skipped)]
    assert query(db, "SELECT count(*) FROM scores WHERE list_contains(?, id)", [bad]) == [(0,)]
    assert query(db, "SELECT status, rows_scored, rows_skipped, rows_failed FROM runs") == [
        ("completed", N - 3 - skipped, skipped, 3)
    ]

    # The next run (ONNX Runtime healthy again) tries exactly those rows.
    monkeypatch.undo()
    again = score(config(db, bundle))
    assert (again.rows_pending, again.rows_scored, again.rows_failed) == (3, 3, 0)
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM scores") == [(N, N)]
    assert query(db, "SELECT count(label) FROM scores WHERE list_contains(?, id)", [bad]) == [(3,)]


def test_a_window_onnx_runtime_cannot_score_at_all_fails_the_run(
    bundle, tmp_path, poisoned_onnx, monkeypatch
):
    db = tmp_path / "market.duckdb"
    make_source(db, N)
    # From row 300 on every row is a bad one: the fourth window has nothing to score.
    set_texts(db, range(300, N), f"{MARKER} crossing")

    with pytest.raises(MarketpulseError) as err:
        score(config(db, bundle))
    message = str(err.value)
    assert message.startswith("ONNX Runtime failed on every row of a window")
    assert "injected ONNX Runtime failure" in message
    status, error, counted = query(
        db, "SELECT status, error, rows_scored + rows_skipped + rows_failed FROM runs"
    )[0]
    assert (status, error) == ("failed", message)
    # Whole windows before the failure stay committed (as many as the writer took before
    # it stopped), and the run row agrees with them.
    committed, top = query(db, "SELECT count(*), coalesce(max(id), -1) FROM scores")[0]
    assert committed % 100 == 0 and top < 300 and counted == committed

    monkeypatch.undo()
    again = score(config(db, bundle))
    assert (again.status, again.rows_already_scored) == ("completed", committed)
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM scores") == [(N, N)]
    assert [r[0] for r in query(db, "SELECT status FROM runs ORDER BY started_at")] == [
        "failed",
        "completed",
    ]


def test_an_error_mid_run_fails_the_run_with_its_first_line(bundle, tmp_path, monkeypatch):
    db = tmp_path / "market.duckdb"
    make_source(db, N)
    real_write = results.write_chunk
    writes = []

    def write_chunk(*args, **kwargs):
        writes.append(1)
        if len(writes) == 3:
            raise OSError("No space left on device\nwhile appending to scores")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(results, "write_chunk", write_chunk)
    with pytest.raises(OSError, match="No space left"):
        score(config(db, bundle))
    assert query(db, "SELECT status, error, rows_scored + rows_skipped FROM runs") == [
        ("failed", "No space left on device", 200)
    ]
    assert query(db, "SELECT count(*) FROM scores") == [(200,)]  # the third chunk not at all


def test_ctrl_c_mid_run_marks_the_run_interrupted_and_a_rerun_finishes(
    bundle, tmp_path, monkeypatch
):
    db = tmp_path / "market.duckdb"
    make_source(db, N)
    real_write = results.write_chunk
    writes = []

    def write_chunk(*args, **kwargs):
        real_write(*args, **kwargs)
        writes.append(1)
        if len(writes) == 2:  # Ctrl-C: SIGINT, KeyboardInterrupt on the main thread
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    monkeypatch.setattr(results, "write_chunk", write_chunk)
    with pytest.raises(KeyboardInterrupt):
        score(config(db, bundle, chunk_rows=50))
    monkeypatch.undo()
    status, error, counted, finished = query(
        db, "SELECT status, error, rows_scored + rows_skipped, finished_at IS NOT NULL FROM runs"
    )[0]
    assert (status, error, finished) == ("interrupted", None, True)
    committed = query(db, "SELECT count(*) FROM scores")[0][0]
    assert 100 <= committed < N and counted == committed

    again = score(config(db, bundle))
    assert again.status == "completed" and again.rows_already_scored == committed
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM scores") == [(N, N)]
    assert query(db, "SELECT sum(rows_scored + rows_skipped) FROM runs") == [(N,)]


@pytest.fixture(scope="module")
def relabeled_bundle(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint under another label scheme, exported: a second model version."""
    pytest.importorskip("optimum.onnxruntime")
    from marketpulse.export import ExportConfig, run

    checkpoint = tmp_path_factory.mktemp("relabeled") / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    config_path = checkpoint / "config.json"
    model_config = json.loads(config_path.read_text())
    labels = ["negative", "neutral", "positive"]
    model_config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    model_config["label2id"] = {label: i for i, label in enumerate(labels)}
    config_path.write_text(json.dumps(model_config))
    return run(
        ExportConfig(
            model=checkpoint,
            out=checkpoint.parent / "bundle",
            variants=("fp32",),
            allow_accuracy_drop=True,
        )
    )


def test_a_model_with_new_labels_adds_its_columns_beside_the_old_rows(
    bundle, relabeled_bundle, tmp_path
):
    assert relabeled_bundle.labels == ["negative", "neutral", "positive"]
    db = tmp_path / "market.duckdb"
    texts = make_source(db, N)
    scored = N - sum(t is None or not t.strip() for t in texts)
    old, new = bundle.version, relabeled_bundle.version
    assert old != new

    score(config(db, bundle))
    assert score(config(db, relabeled_bundle)).rows_scored == scored  # the old rows are no help

    columns = [r[0] for r in query(db, "SELECT column_name FROM (DESCRIBE scores)")]
    assert [c for c in columns if c.startswith("p_")] == [
        "p_bearish", "p_bullish", "p_neutral", "p_negative", "p_positive"
    ]  # fmt: skip
    by_version = dict(
        (r[0], r[1:])
        for r in query(
            db,
            "SELECT model_version, count(*), count(label), count(p_bearish), count(p_bullish), "
            "count(p_neutral), count(p_negative), count(p_positive), "
            "list(DISTINCT label) FILTER (label IS NOT NULL) FROM scores GROUP BY ALL",
        )
    )
    # The old rows read NULL in the new model's columns, and the other way round;
    # p_neutral is shared by name and filled by both.
    assert by_version[old][:7] == (N, scored, scored, scored, scored, 0, 0)
    assert by_version[new][:7] == (N, scored, 0, 0, scored, scored, scored)
    assert set(by_version[old][7]) <= {"bearish", "bullish", "neutral"}
    assert set(by_version[new][7]) <= {"negative", "neutral", "positive"}
    sums = query(
        db,
        "SELECT min(p_negative + p_neutral + p_positive), max(p_negative + p_neutral + p_positive) "
        "FROM scores WHERE model_version = ? AND label IS NOT NULL",
        [new],
    )[0]
    np.testing.assert_allclose(sums, [1.0, 1.0], atol=1e-5)
    assert dict(query(db, "SELECT model_version, labels FROM models")) == {
        old: bundle.labels,
        new: relabeled_bundle.labels,
    }

    # The old model still writes into the widened table: a new post, NULL in the new columns.
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO posts VALUES (100000, 'oil rallies on supply news', 'en')")
    con.close()
    assert score(config(db, bundle)).rows_scored == 1
    assert query(
        db,
        "SELECT p_bearish IS NOT NULL, p_negative IS NULL FROM scores "
        "WHERE id = 100000 AND model_version = ?",
        [old],
    ) == [(True, True)]


def test_rows_the_planned_ranges_missed_get_another_pass(bundle, tmp_path, monkeypatch):
    """The rowid ranges are planned once per pass; rows they miss (another process's delete
    and checkpoint renumbered them, or they arrived meanwhile) are scored in the same run."""
    from marketpulse.runtime import local_engine

    db = tmp_path / "market.duckdb"
    make_source(db, N)
    plan, calls = local_engine._segments, []

    def first_plan_misses_the_tail(run, stage_dir):
        calls.append(1)
        segments = plan(run, stage_dir)
        if len(calls) > 1:
            return segments
        # the first plan stops at rowid 400: rows 400.. are unseen, as after a renumbering
        return segments[:1]

    monkeypatch.setattr(local_engine, "SEGMENT_ROWIDS", 400)
    monkeypatch.setattr(local_engine, "READ_ROWIDS", 400)
    monkeypatch.setattr(local_engine, "_segments", first_plan_misses_the_tail)
    stats = score(config(db, bundle))
    assert len(calls) == 2 and stats.status == "completed"
    assert stats.rows_scored + stats.rows_skipped == N
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM scores") == [(N, N)]


def test_a_results_table_holds_one_source_tables_scores(tiny_bundle, tmp_path):
    """Scores match rows by id alone: a second table with the same ids scored into the
    same results table would find its rows 'already scored' with the first table's
    labels. Refused in one line, before anything is written; another name works."""

    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(
            "CREATE TABLE news AS SELECT range AS id, 'shares fall ' || range AS text FROM range(5)"
        )
        con.execute(
            "CREATE TABLE tweets AS SELECT range AS id, 'oil jumps ' || range AS text FROM range(8)"
        )

    def run(table, **kw):
        return score(ScoreConfig(db, table, "id", "text", tiny_bundle.path, progress=False, **kw))

    assert run("news").rows_scored == 5
    with pytest.raises(MarketpulseError) as err:
        run("tweets")
    assert str(err.value) == (
        "results table 'scores' already holds the scores of table 'news', and scores are "
        "matched to rows by id alone; pass --results-table with another name for 'tweets' "
        "(e.g. tweets_scores)"
    )
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM scores").fetchone() == (5,)  # news only
    assert run("tweets", results_table="tweets_scores").rows_scored == 8
    assert run("NEWS").rows_scored == 0  # the same table, as DuckDB resolves names
    assert run("main.news").rows_scored == 0


def test_a_results_table_holds_one_source_files_table(tiny_bundle, tmp_path):
    """Two database files with a table of the same name are two tables: the second file's
    `tweets` scored into the first's results would find every row 'already scored'."""

    def make(path, word, n):
        with duckdb.connect(str(path)) as con:
            con.execute(
                f"CREATE TABLE tweets AS SELECT range AS id, '{word} ' || range AS text "
                f"FROM range({n})"
            )
        return path

    first, other = (
        make(tmp_path / "r.duckdb", "oil jumps", 5),
        make(tmp_path / "o.duckdb", "gold", 7),
    )
    res = tmp_path / "res.duckdb"

    def run(db, **kw):
        cfg = ScoreConfig(db, "tweets", "id", "text", tiny_bundle.path, progress=False, **kw)
        return score(cfg)

    assert run(first, results_db=res).rows_scored == 5
    with pytest.raises(MarketpulseError) as err:
        run(other, results_db=res)
    assert str(err.value) == (
        f"results table 'scores' already holds the scores of table 'tweets' of "
        f"{first.resolve()}, and scores are matched to rows by id alone; pass "
        f"--results-table with another name for 'tweets' of {other.resolve()} (e.g. "
        "o_tweets_scores), or --results-db with another file"
    )
    assert query(res, "SELECT count(*) FROM runs") == [(1,)]
    assert run(other, results_db=res, results_table="o_tweets_scores").rows_scored == 7
    assert run(first, results_db=res).rows_already_scored == 5  # the same file still runs
    # the results file's own `tweets` is a third table for `scores` of res.duckdb
    make(res, "copper", 3)
    with pytest.raises(MarketpulseError, match=r"for 'tweets' of the results file .*res\.duckdb"):
        run(res)

    # Scores in the source file itself follow the file when it moves (or is copied).
    assert run(other).rows_scored == 7
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(other, moved / "o.duckdb")
    assert run(moved / "o.duckdb").rows_already_scored == 7
    # ... and another file's `tweets` is refused there too
    with pytest.raises(MarketpulseError, match="of the results file"):
        run(first, results_db=moved / "o.duckdb")

    # A runs row from before runs.results_db whose source file is not the results file:
    # it may be this file before a move, so it refuses nothing for the file itself...
    with duckdb.connect(str(moved / "o.duckdb")) as con:
        con.execute("ALTER TABLE runs DROP COLUMN results_db")
        con.execute("UPDATE runs SET source_db = '/gone/o.duckdb'")
    assert run(moved / "o.duckdb").rows_already_scored == 7
    # ... but is another file for a source kept apart from the results
    with pytest.raises(MarketpulseError, match="of /gone/o.duckdb"):
        run(first, results_db=moved / "o.duckdb")
    # and a row without source_db is unknown: names alone are compared
    with duckdb.connect(str(moved / "o.duckdb")) as con:
        con.execute("UPDATE runs SET source_db = NULL")
    assert run(first, results_db=moved / "o.duckdb").rows_scored == 0


@pytest.mark.parametrize("name", ["runs", "RUNS", "models", "main.Explanations"])
def test_marketpulse_own_table_names_are_no_results_table(tiny_bundle, tmp_path, name):
    db, res = tmp_path / "m.duckdb", tmp_path / "res.duckdb"
    make_source(db, 10)
    for results_db in (None, res):
        cfg = config(db, tiny_bundle, results_table=name, results_db=results_db)
        with pytest.raises(MarketpulseError) as err:
            score(cfg)
        key = name.lower().removeprefix("main.")
        assert str(err.value) == (
            f"--results-table {name!r} is the name of marketpulse's own {key} table; pass "
            "--results-table with another name (e.g. scores)"
        )
    assert query(db, "SELECT table_name FROM information_schema.tables") == [("posts",)]
    assert not res.exists()  # nothing written, not even an empty results file


def test_a_write_error_says_the_fix_that_fits_it(bundle, tmp_path):
    """Only a file-system error (disk full, a file that cannot be written) asks for disk
    space; a constraint on the results table names DuckDB's message and that fix."""
    import subprocess
    import sys
    import textwrap

    db = tmp_path / "market.duckdb"
    make_source(db, 50)
    with duckdb.connect(str(db)) as con:
        con.execute(
            "CREATE TABLE scores (id BIGINT NOT NULL, model_version VARCHAR NOT NULL, "
            "label VARCHAR, confidence DOUBLE CHECK (confidence < 0), reason VARCHAR, "
            "truncated BOOLEAN, scored_at TIMESTAMP)"
        )
    with pytest.raises(MarketpulseError) as err:
        score(config(db, bundle))
    message = str(err.value)
    assert message.startswith(f"cannot write to {db} (Constraint Error: CHECK constraint failed")
    assert "drop that constraint, or pass --results-table with another name" in message
    assert "free disk space" not in message
    assert query(db, "SELECT status, error FROM runs") == [("failed", message)]
    assert query(db, "SELECT count(*) FROM scores") == [(0,)]

    # a full disk (here: a file-size limit) still says so
    script = textwrap.dedent(
        f"""
        import resource, signal
        from pathlib import Path
        from marketpulse.errors import MarketpulseError
        from marketpulse.runtime.database import Database
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        db = Database(Path({str(db)!r}), None, "512MB", 5, "v1.0.0")
        resource.setrlimit(resource.RLIMIT_FSIZE, (4_000_000, 4_000_000))
        try:
            with db.write() as con:
                con.execute("CREATE TABLE filler AS SELECT repeat('x', 200) || range AS t FROM range(100000)")
        except MarketpulseError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.startswith(f"cannot write to {db} ("), out.stdout + out.stderr
    assert "free disk space or make the file writable, then rerun" in out.stdout
