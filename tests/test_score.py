"""`marketpulse score` end to end on the tiny bundle: what lands in DuckDB, and when not."""

from __future__ import annotations

import json
import re
import shutil

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime_support import make_source, spread_bundle

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.inference.predictor import cuda_provider_available
from marketpulse.runtime import Predictor, ScoreConfig, score

N = 600


def run_cli(db, bundle, *extra):
    args = ["score", "--db", str(db), "--table", "posts", "--id-col", "id", "--text-col", "text"]
    return CliRunner().invoke(main, [*args, "--bundle", str(bundle), "--device", "cpu", *extra])


def tables(db) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    finally:
        con.close()


def query(db, sql, params=None):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


@pytest.fixture
def source(tmp_path):
    db = tmp_path / "market.duckdb"
    texts = make_source(db, N, long_every=50)
    return db, texts


def test_scores_every_row_once_with_probabilities_on_the_right_id(source, bundle):
    db, texts = source
    # fp32, the graph the expected probabilities below are computed with.
    result = run_cli(db, bundle.path, "--batch-tokens", "256", "--variant", "fp32")
    assert result.exit_code == 0, result.output
    assert "completed: scored" in result.output

    rows = query(
        db,
        "SELECT id, label, confidence, p_bearish, p_bullish, p_neutral, reason, truncated, "
        "model_version, scored_at FROM scores ORDER BY id",
    )
    assert [r[0] for r in rows] == list(range(N))
    assert {r[8] for r in rows} == {bundle.version}
    assert all(r[9] is not None for r in rows)
    # Results must be on the id they belong to even though batches were length-sorted:
    # compare with the same texts scored one at a time by the fp32 graph.
    predictor = Predictor(bundle, variant="fp32")
    scored = [r for r in rows if r[1] is not None]
    expected = predictor.predict_proba([texts[r[0]] for r in scored])
    got = np.array([r[3:6] for r in scored])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    labels = np.array(bundle.labels)[expected.argmax(axis=1)]
    assert labels.tolist() == [r[1] for r in scored]
    assert len(set(np.round(got[:, 0], 3))) > 50  # the probabilities really differ per text
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose([r[2] for r in scored], got.max(axis=1))

    for r in rows:
        text = texts[r[0]]
        if text is None:
            assert (r[1], r[2], r[6]) == (None, None, "null_text")
        elif not text.strip():
            assert (r[1], r[2], r[6]) == (None, None, "empty_text")
        else:
            assert r[6] is None
    long_ids = {i for i, t in enumerate(texts) if t and "rate fears" in t}
    assert {r[0] for r in rows if r[7]} == long_ids

    n_null = sum(t is None for t in texts)
    n_empty = sum(t is not None and not t.strip() for t in texts)
    run = query(
        db,
        "SELECT status, rows_scored, rows_skipped, rows_failed, rows_truncated, model_version, "
        "source, finished_at IS NOT NULL, rows_per_s > 0 FROM runs",
    )
    assert run == [
        ("completed", N - n_null - n_empty, n_null + n_empty, 0, len(long_ids), bundle.version, "posts", True, True)
    ]  # fmt: skip
    models = query(db, "SELECT model_version, labels, manifest FROM models")
    assert models[0][:2] == (bundle.version, bundle.labels)
    assert json.loads(models[0][2])["model_version"] == bundle.version


def test_rerun_skips_scored_rows_and_scores_only_new_ones(source, bundle):
    db, _ = source
    cfg = ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, device="cpu", progress=False)  # fmt: skip
    first = score(cfg)
    assert first.rows_scored + first.rows_skipped == N
    again = score(cfg)
    assert (again.rows_scored, again.rows_skipped, again.rows_already_scored) == (0, 0, N)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO posts VALUES (100000, 'brand new post about oil', 'en')")
    con.close()
    third = score(cfg)
    assert (third.rows_scored, third.rows_already_scored) == (1, N)
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM scores") == [(N + 1, N + 1)]
    assert [r[0] for r in query(db, "SELECT status FROM runs")] == ["completed"] * 3


def test_limit_where_and_json(source, bundle):
    db, _ = source
    result = run_cli(
        db, bundle.path, "--where", "lang = 'en' AND id < 300", "--limit", "40", "--json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["rows_scored"] + summary["rows_skipped"] == 40
    ids = [r[0] for r in query(db, "SELECT id FROM scores")]
    assert len(ids) == 40 and all(i % 2 == 0 and i < 300 for i in ids)
    assert query(db, "SELECT filter, row_limit FROM runs") == [("lang = 'en' AND id < 300", 40)]


def test_results_db_leaves_the_source_untouched(source, bundle, tmp_path):
    db, _ = source
    out = tmp_path / "results.duckdb"
    result = run_cli(db, bundle.path, "--results-db", str(out), "--results-table", "sentiment")
    assert result.exit_code == 0, result.output
    assert tables(db) == {"posts"}
    assert tables(out) == {"sentiment", "runs", "models"}
    assert query(out, "SELECT count(DISTINCT id) FROM sentiment") == [(N,)]


@pytest.mark.parametrize(
    "setup, flags, message",
    [
        (None, {"--table": "nope"}, "table 'nope' not found (tables: posts); pass --table"),
        (None, {"--text-col": "body"}, "column 'body' not found in table 'posts' (columns: id, text, lang); pass --text-col"),
        ("UPDATE posts SET id = 1 WHERE id = 2", {}, "id column 'id' of 'posts' has 1 duplicate value(s) (e.g. 1)"),
        ("UPDATE posts SET id = NULL WHERE id = 2", {}, "id column 'id' of 'posts' has 1 NULL value(s)"),
        (None, {"--text-col": "id", "--id-col": "lang"}, "text column 'id' has type BIGINT, not VARCHAR"),
        (None, {"--where": "id IN (SELECT id FROM posts)"}, "uses a subquery expression, which is not allowed"),
        (None, {"--where": "1=1; DROP TABLE posts"}, "no ';' or other statements"),
        (None, {"--where": "secret > 0"}, "column 'secret', which the source table lacks"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_error_before_anything_is_written(
    source, bundle, setup, flags, message
):
    db, _ = source
    if setup:
        con = duckdb.connect(str(db))
        con.execute(setup)
        con.close()
    args = {"--db": str(db), "--table": "posts", "--id-col": "id", "--text-col": "text"}
    args.update(flags, **{"--bundle": str(bundle.path), "--device": "cpu"})
    result = CliRunner().invoke(main, ["score", *[x for kv in args.items() for x in kv]])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.count("\n") == 1  # one line
    assert tables(db) == {"posts"}


def test_corrupt_bundle_is_refused_before_anything_is_written(source, bundle, tmp_path):
    db, _ = source
    broken = tmp_path / "bundle"
    shutil.copytree(bundle.path, broken)
    with open(broken / "model.int8.onnx", "ab") as fh:
        fh.write(b"junk")
    result = run_cli(db, broken)
    assert result.exit_code == 1
    assert "model.int8.onnx: sha256 mismatch" in result.output and "re-export" in result.output
    assert tables(db) == {"posts"}
    result = run_cli(db, tmp_path / "missing")
    assert result.exit_code == 1 and "bundle directory" in result.output


@pytest.mark.skipif(cuda_provider_available(), reason="this machine has a CUDA provider")
def test_device_cuda_without_provider_fails_and_auto_falls_back(source, bundle):
    db, _ = source
    result = run_cli(db, bundle.path, "--device", "cuda")
    assert result.exit_code == 1
    assert "--device cuda but onnxruntime has no CUDA provider" in result.output
    assert tables(db) == {"posts"}
    # --variant int8: named, so the int8 graph runs whatever auto would have timed
    result = run_cli(db, bundle.path, "--device", "auto", "--limit", "5", "--variant", "int8")
    assert result.exit_code == 0, result.output
    assert "found no CUDA provider" in result.output and "using CPU" in result.output
    assert query(db, "SELECT provider, variant FROM runs") == [("CPUExecutionProvider", "int8")]


def test_results_table_with_another_id_type_is_refused(source, bundle):
    db, _ = source
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE scores (id VARCHAR, model_version VARCHAR, label VARCHAR, confidence DOUBLE, reason VARCHAR, truncated BOOLEAN, scored_at TIMESTAMP)")  # fmt: skip
    con.close()
    result = run_cli(db, bundle.path)
    assert result.exit_code == 1
    assert "holds ids of type VARCHAR, the source id column is BIGINT" in result.output
    assert query(db, "SELECT count(*) FROM scores") == [(0,)]


def test_rowid_ranges_segments_and_limit_cover_every_row_once(source, bundle, monkeypatch):
    from marketpulse.runtime import local_engine

    # Small ranges and segments so one run crosses many reads and several reconnects.
    monkeypatch.setattr(local_engine, "READ_ROWIDS", 70)
    monkeypatch.setattr(local_engine, "SEGMENT_ROWIDS", 210)
    db, texts = source
    cfg = ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, device="cpu", chunk_rows=32, progress=False)  # fmt: skip
    first = score(ScoreConfig(**{**cfg.__dict__, "limit": 333}))
    assert first.rows_scored + first.rows_skipped == 333
    rest = score(cfg)
    assert rest.rows_scored + rest.rows_skipped == N - 333
    assert rest.rows_already_scored == 333
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM scores") == [(N, N)]
    assert query(db, "SELECT sum(rows_scored + rows_skipped) FROM runs") == [(N,)]


@pytest.mark.parametrize(
    "id_sql",
    [
        # an ENUM declared out of alphabetical order
        "(['zeta', 'mu', 'alpha', 'beta'])[range % 4 + 1]::rev || '' AS id_text, "
        "(['zeta', 'mu', 'alpha', 'beta'])[range % 4 + 1]::rev AS id",
        # ids that sort apart under the source's collation and under plain VARCHAR
        "CASE WHEN range % 2 = 0 THEN 'B' ELSE 'a' END || range AS id_text, "
        "(CASE WHEN range % 2 = 0 THEN 'B' ELSE 'a' END || range) COLLATE NOCASE AS id",
        # nanoseconds, and an 'infinity' timestamp
        "NULL AS id_text, '2024-01-01 00:00:00.000000001'::TIMESTAMP_NS + to_microseconds(range) AS id",
        "NULL AS id_text, CASE WHEN range = 0 THEN 'infinity'::TIMESTAMP "
        "ELSE TIMESTAMP '2024-01-01' + to_seconds(range) END AS id",
    ],
    ids=["enum", "nocase", "timestamp_ns", "infinity"],
)
def test_a_rerun_scores_nothing_again_whatever_the_id_type(bundle, tmp_path, id_sql):
    """Resume bounds the scored ids it reads by the range's min and max for integer ids
    only: other types did not compare the same after the round trip through Python."""
    db = tmp_path / "ids.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TYPE rev AS ENUM ('zeta', 'mu', 'alpha', 'beta')")
    con.execute(f"CREATE TABLE posts AS SELECT {id_sql}, 'shares rally ' || range AS text FROM range(4)")  # fmt: skip
    con.execute("ALTER TABLE posts DROP COLUMN id_text")
    con.close()
    assert run_cli(db, bundle.path, "--variant", "fp32").exit_code == 0
    again = run_cli(db, bundle.path, "--variant", "fp32")
    assert again.exit_code == 0, again.output
    assert "scored 0 rows" in again.output and "4 already scored" in again.output
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM scores") == [(4, 4)]


@pytest.mark.parametrize("id_sql", ["'10:00:00+01'::TIMETZ", "range::UHUGEINT"])
def test_id_types_that_cannot_key_scores_are_refused_before_any_write(bundle, tmp_path, id_sql):
    db = tmp_path / "ids.duckdb"
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE posts AS SELECT {id_sql} AS id, 'rally' AS text FROM range(1)")
    con.close()
    result = run_cli(db, bundle.path, "--variant", "fp32")
    assert result.exit_code == 1
    assert "which cannot key the scores; pass --id-col" in result.output
    assert tables(db) == {"posts"}


def test_segments_write_whole_row_groups(bundle, tmp_path):
    # A short row group left by one segment's checkpoint is merged with its neighbours
    # in memory by a later checkpoint (up to three row groups): that made peak RSS grow
    # with the table. NULL and blank texts are written without inference, so this is fast.
    db = tmp_path / "blank.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE posts AS SELECT range AS id, CASE WHEN range % 3 = 0 THEN NULL ELSE ' ' END AS text FROM range(250000)")  # fmt: skip
    con.close()
    cfg = ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, device="cpu", progress=False)  # fmt: skip
    assert score(cfg).rows_skipped == 250_000
    sizes = query(db, "SELECT row_group_id, max(count) FROM pragma_storage_info('scores') WHERE column_name = 'id' AND segment_type = 'BIGINT' GROUP BY ALL ORDER BY 1")  # fmt: skip
    assert [n for _, n in sizes] == [122_880, 122_880, 250_000 - 2 * 122_880]
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM scores") == [(250_000, 250_000)]


def test_a_view_is_scored_through_one_streaming_query(source, bundle):
    db, _ = source
    con = duckdb.connect(str(db))
    con.execute("CREATE VIEW english AS SELECT * FROM posts WHERE lang = 'en'")
    con.close()
    result = CliRunner().invoke(main, ["score", "--db", str(db), "--table", "english", "--id-col", "id", "--text-col", "text", "--bundle", str(bundle.path), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT count(*), bool_and(id % 2 = 0) FROM scores") == [(N // 2, True)]


def test_a_text_repeated_in_a_window_is_scored_once_and_its_duplicates_counted(
    bundle, tmp_path, monkeypatch
):
    """Same rows and probabilities as scoring every row, ONNX Runtime sees each text once."""
    db = tmp_path / "market.duckdb"
    texts = make_source(db, N)
    con = duckdb.connect(str(db))
    # ids 0..99 are one window (chunk_rows=100): 10..19 repeat id 9's text, 30..39 id 29's
    con.execute(
        "UPDATE posts SET text = (SELECT text FROM posts WHERE id = 9) WHERE id BETWEEN 10 AND 19"
    )
    con.execute(
        "UPDATE posts SET text = (SELECT text FROM posts WHERE id = 29) WHERE id BETWEEN 30 AND 39"
    )
    # the next window repeats id 0's text: a copy is only looked for within a window
    con.execute("UPDATE posts SET text = (SELECT text FROM posts WHERE id = 0) WHERE id = 100")
    con.close()
    seen = []
    real_run = Predictor.run

    def run(self, input_ids, attention_mask):
        seen.extend(map(tuple, np.where(attention_mask == 1, input_ids, -1).tolist()))
        return real_run(self, input_ids, attention_mask)

    cfg = ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, device="cpu", variant="fp32", chunk_rows=100, progress=False)  # fmt: skip
    monkeypatch.setattr(Predictor, "run", run)
    stats = score(cfg)
    assert (stats.rows_duplicate, stats.rows_scored + stats.rows_skipped) == (20, N)
    assert query(db, "SELECT rows_duplicate FROM runs") == [(20,)]
    assert len(seen) == stats.rows_scored - 20  # each copy was inferred once, not per row
    rows = dict(query(db, "SELECT id, [p_bearish, p_bullish, p_neutral] FROM scores"))
    assert all(rows[i] == rows[9] for i in range(10, 20))
    assert all(rows[i] == rows[29] for i in range(30, 40))
    expected = Predictor(bundle, variant="fp32").predict_proba([texts[9], texts[29]])
    np.testing.assert_allclose([rows[9], rows[29]], expected, atol=1e-5)


def test_a_runs_table_from_before_rows_duplicate_gets_the_column(source, bundle):
    db, _ = source
    cfg = ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, device="cpu", limit=10, progress=False)  # fmt: skip
    score(cfg)
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE runs DROP COLUMN rows_duplicate")
    con.close()
    again = score(cfg)
    assert again.status == "completed" and again.rows_scored + again.rows_skipped == 10
    got = query(db, "SELECT rows_duplicate FROM runs ORDER BY started_at")
    assert got == [(None,), (again.rows_duplicate,)]


def test_each_row_names_the_run_that_scored_it_and_old_tables_gain_the_column(source, bundle):
    db, _ = source
    cfg = ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, device="cpu", limit=10, progress=False)  # fmt: skip
    first = score(cfg)
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE scores DROP COLUMN run_id")  # a table from before run_id
    con.close()
    second = score(cfg)
    got = query(
        db,
        "SELECT s.run_id, r.variant, count(*) FROM scores s LEFT JOIN runs r USING (run_id) "
        "GROUP BY ALL ORDER BY s.run_id NULLS FIRST",
    )
    assert first.run_id != second.run_id
    assert got == [(None, None, 10), (second.run_id, second.variant, 10)]


def test_a_missing_table_lists_tables_of_every_schema_qualified(source, bundle, tmp_path):
    """The table the user meant may sit in another schema: the list names it as they
    would pass it (`raw.tweets`), in score's message and in train/evaluate's."""
    from marketpulse.sql import table_columns

    db, _ = source
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE SCHEMA raw; CREATE TABLE raw.tweets (id BIGINT, text VARCHAR)")
        con.execute("CREATE VIEW english AS SELECT * FROM posts WHERE lang = 'en'")
    listed = "(tables: english, posts, raw.tweets)"
    results_db = tmp_path / "results.duckdb"
    for results in ([], ["--results-db", str(results_db)]):
        result = run_cli(db, bundle.path, "--table", "tweets", *results)
        assert result.exit_code == 1 and "table 'tweets' not found" in result.output
        assert listed in result.output
    assert tables(db) == {"posts", "english"}  # nothing written: no scores, runs or models
    assert not results_db.exists() or tables(results_db) == set()
    with duckdb.connect(str(db), read_only=True) as con:
        with pytest.raises(MarketpulseError, match=re.escape(f"not found {listed}")):
            table_columns(con, "tweets")


BAD_VIEW = (
    "CREATE VIEW badv AS SELECT id, CASE WHEN id = {bad} THEN CAST(CAST(lang AS INTEGER) "
    "AS VARCHAR) ELSE text END AS text, lang FROM posts"
)
READ_FAILED = "reading the rows of 'badv' failed (Conversion Error: Could not convert string 'en'"


def test_a_view_that_fails_when_read_is_one_line_and_the_run_row_says_so(source, bundle):
    db, _ = source
    with duckdb.connect(str(db)) as con:
        con.execute(BAD_VIEW.format(bad=300))
    result = run_cli(db, bundle.path, "--table", "badv", "--variant", "fp32")
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert line.startswith(f"Error: {READ_FAILED}")
    assert line.endswith("fix the table or view so that `SELECT * FROM badv` runs, or pass --where to leave the failing rows out")  # fmt: skip
    assert "Traceback" not in result.output and "DuckDB failed" not in result.output
    (status, error, scored), *_ = query(db, "SELECT status, error, rows_scored FROM runs")
    assert (status, scored) == ("failed", 0)
    assert error == line.removeprefix("Error: ")
    # the same error from Python, with a filter named in it
    cfg = ScoreConfig(db=db, table="badv", id_col="id", text_col="text", bundle=bundle.path, device="cpu", variant="fp32", where="lang = 'en'", progress=False)  # fmt: skip
    with pytest.raises(MarketpulseError, match=r"^--where \"lang = 'en'\" fails on the rows of 'badv' \(Conversion Error"):  # fmt: skip
        score(cfg)


def test_reading_a_failing_view_for_the_auto_check_or_staging_is_one_line(source, tmp_path):
    """The two other reads of a view's rows: auto's sample of the pending texts, and the
    staging stream, where DuckDB's error comes mid-stream through Arrow (as an OSError)."""
    from marketpulse.runtime.source import check_source, export_pending, sample_pending_texts

    db, _ = source
    with duckdb.connect(str(db)) as con:
        con.execute(BAD_VIEW.format(bad=N - 2))  # 'en'
        con.execute("CREATE TABLE big AS SELECT range AS id, 'en' AS lang, 'x' AS text FROM range(200000)")  # fmt: skip
        con.execute("CREATE VIEW bigv AS SELECT id, CASE WHEN id = 150000 THEN CAST(CAST(lang AS INTEGER) AS VARCHAR) ELSE text END AS text FROM big")  # fmt: skip
    with duckdb.connect(str(db), read_only=True) as con:
        src = check_source(con, "badv", "id", "text", None, False)
        with pytest.raises(MarketpulseError, match=re.escape(READ_FAILED)):
            sample_pending_texts(con, src, "scores", "v1", 64)
    with duckdb.connect(str(db), read_only=True) as con:
        big = check_source(con, "bigv", "id", "text", None, False)
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET threads = 1")  # row 150,000 comes after the first batches
        sql = f"SELECT id, text FROM {big.table_sql}"
        with pytest.raises(MarketpulseError, match=r"^reading the rows of 'bigv' failed \(Conversion"):  # fmt: skip
            export_pending(con, sql, [], tmp_path / "stage", 1000, big)
    assert len(list((tmp_path / "stage").iterdir())) > 1  # it failed mid-stream


def test_column_names_match_in_any_letter_case_as_duckdb_does(tmp_path, bundle):
    """DuckDB resolves identifiers case-insensitively; so do --id-col and --text-col."""
    db = tmp_path / "upper.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(
            "CREATE TABLE Posts AS SELECT i AS ID, 'headline ' || i AS Body FROM range(40) t(i)"
        )
    args = ["score", "--db", str(db), "--table", "posts", "--id-col", "id", "--text-col", "BODY"]
    result = CliRunner().invoke(main, [*args, "--bundle", str(bundle.path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT count(DISTINCT id), count(label) FROM scores") == [(40, 40)]
    same = CliRunner().invoke(
        main, [*args[:-4], "--id-col", "ID", "--text-col", "id", "--bundle", str(bundle.path)]
    )
    assert same.exit_code == 1 and "name the same column" in same.output


def test_more_threads_than_cores_is_warned_about(source, bundle):
    from marketpulse.cpu import available_cores

    db, _ = source
    result = run_cli(db, bundle.path, "--variant", "fp32", "--limit", "5", "--threads", "999")
    assert result.exit_code == 0, result.output
    assert f"warning: --threads 999 is more than the {available_cores()} core(s)" in result.output
    quiet = run_cli(db, bundle.path, "--variant", "fp32", "--limit", "5", "--threads", "1")
    assert "warning: --threads" not in quiet.output
