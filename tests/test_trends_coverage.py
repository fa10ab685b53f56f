"""What trends covers and where it reads: source rows without a score are counted and
warned about, scores written to another file (`score --results-db`) are read from it, and
the default index labels are one model's pair, matched in any letter case."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from trends_fixtures import build_db, insert_scores, register_model, trends_config

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.runtime import results
from marketpulse.trends import format_report, run, summary

N_POSTS = 37  # rows of trends_fixtures.COUNTS


@pytest.fixture
def db(tmp_path):
    return build_db(tmp_path / "market.duckdb")


def _cfg(db, **kw):
    return trends_config(db, **{"horizon": 0, **kw})


def _cli(db, *extra):
    args = ["trends", "--db", str(db), "--source", "posts", "--id-col", "id"]
    args += ["--time-col", "posted_at", "--by", "brand", "--grain", "day", "--window", "3"]
    return CliRunner().invoke(main, [*args, "--horizon", "0", *extra])


def _trend(db, table="trend_posts_day"):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT * FROM {table} ORDER BY brand, bucket").fetchall()


def _objects(db) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT table_name FROM duckdb_tables() UNION ALL "
            "SELECT view_name FROM duckdb_views() WHERE NOT internal"
        ).fetchall()
    return {r[0] for r in rows}


# --- 1. source rows without a score ---------------------------------------------------


def _unscore(db, keep: int) -> int:
    """Leave ids 1..keep scored, as after `score --limit`; return the rows left unscored."""
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM scores WHERE id > ?", [keep])
        return con.execute("SELECT count(*) FROM posts WHERE id > ?", [keep]).fetchone()[0]


def test_a_partly_scored_source_is_counted_reported_and_warned(db, capsys):
    unscored = _unscore(db, 10)
    assert unscored == N_POSTS - 10
    result = run(_cfg(db))
    assert (result.source_rows, result.unscored_rows) == (N_POSTS, unscored)
    assert sum(r[2] for r in _trend(db)) == 10  # the trend holds the scored rows only
    err = capsys.readouterr().err
    share = f"{unscored / N_POSTS:.1%}"
    assert f"trends: warning: {unscored:,} of {N_POSTS} rows of 'posts' ({share})" in err
    assert f"`marketpulse score --db {db} --table posts ...`" in err
    assert len(err.strip().splitlines()) == 1
    report = format_report(result)
    assert f"left out: {unscored} of {N_POSTS} source rows ({share}) that no model" in report
    out = summary(result)
    assert (out["source_rows"], out["unscored_rows"]) == (N_POSTS, unscored)
    assert out["unscored_share"] == pytest.approx(unscored / N_POSTS)
    assert out["null_time_rows"] == 0


def test_unscored_and_null_time_rows_are_counted_apart(db, capsys):
    """A scored row with a NULL time is a null-time row; an unscored one is unscored."""
    _unscore(db, 30)
    with duckdb.connect(str(db)) as con:  # ids 29, 30 scored; 31, 32 not
        con.execute("UPDATE posts SET posted_at = NULL WHERE id BETWEEN 29 AND 32")
    result = run(_cfg(db))
    assert (result.null_time_rows, result.unscored_rows) == (2, N_POSTS - 30)
    assert sum(r[2] for r in _trend(db)) == 28


def test_rows_the_scorer_skipped_are_counted_apart(db):
    """A scored row without a label (empty text) is left out and counted, not unscored."""
    _unscore(db, 30)
    with duckdb.connect(str(db)) as con:
        con.execute(
            "UPDATE scores SET label = NULL, confidence = NULL, reason = 'empty_text' "
            "WHERE id BETWEEN 1 AND 3"
        )
    result = run(_cfg(db))
    assert (result.skipped_rows, result.unscored_rows) == (3, N_POSTS - 30)
    assert sum(r[2] for r in _trend(db)) == 27
    report = format_report(result)
    assert "left out: 3 rows the scorer skipped without a label" in report
    assert summary(result)["skipped_rows"] == 3


def test_repeated_or_null_source_ids_are_refused_before_anything_is_written(db):
    """A re-delivered batch appended again counted each score twice, silently."""
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO posts SELECT * FROM posts WHERE id <= 3")
    with pytest.raises(MarketpulseError, match=r"has 3 duplicate value\(s\) \(e.g. [123]\)"):
        run(_cfg(db))
    assert "trend_posts_day" not in _objects(db)
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM posts WHERE rowid > (SELECT max(rowid) - 3 FROM posts)")
        con.execute("INSERT INTO posts (id, posted_at) VALUES (NULL, TIMESTAMP '2024-01-05')")
    with pytest.raises(MarketpulseError, match=r"has 1 NULL value\(s\), and `marketpulse score`"):
        run(_cfg(db))
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM posts WHERE id IS NULL")
    assert run(_cfg(db)).source_rows == N_POSTS


def test_an_output_file_that_cannot_be_written_is_one_line(db, tmp_path, monkeypatch):
    """Checked before the run when the folder is a file; after the commit, it says that
    the tables were written (it was a 40-line traceback)."""
    blocker = tmp_path / "notdir.txt"
    blocker.write_text("x")
    result = _cli(db, "--csv", str(blocker / "t.csv"))
    assert result.exit_code == 1 and "is not a folder this user can write to" in result.output
    assert "trend_posts_day" not in _objects(db)
    import pyarrow.csv as pacsv

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pacsv, "write_csv", full_disk)
    result = _cli(db, "--csv", str(tmp_path / "t.csv"))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: the trend tables were written to {db}")
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert "trend_posts_day" in _objects(db)


def test_readers_open_the_database_while_trends_computes(db, monkeypatch):
    """trends computes on a read-only connection and holds --db read-write only for the
    short copy at the end, so a plain reader (a dashboard) is never refused meanwhile."""
    from marketpulse.trends import stage

    opened = []
    real = stage._write_trend_table

    def with_a_reader(*args):
        real(*args)
        probe = "import duckdb, sys; duckdb.connect(sys.argv[1], read_only=True).close()"
        opened.append(subprocess.run([sys.executable, "-c", probe, str(db)]).returncode)

    monkeypatch.setattr(stage, "_write_trend_table", with_a_reader)
    run(_cfg(db, horizon=2))
    assert opened == [0]
    assert {"trend_posts_day", "forecast_posts_day", "latest_scores"} <= _objects(db)


def test_a_grid_stretched_by_a_stray_time_is_reported(db, capsys):
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE posts SET posted_at = TIMESTAMP '1970-01-01' WHERE id = 1")
    result = run(_cfg(db))
    assert result.sparse_note.startswith(
        "trend_posts_day: 1 row in the first day bucket (1970-01-01) lies 19,722 empty buckets "
        "before the rest (which starts 2024-01-01); a stray 'posted_at'"
    )
    assert f"trends: warning: {result.sparse_note}" in capsys.readouterr().err
    assert f"warning: {result.sparse_note}" in format_report(result)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE posts SET posted_at = TIMESTAMP '2024-01-02' WHERE id = 1")
    assert run(_cfg(db)).sparse_note == ""


def test_a_fully_scored_source_says_nothing(db, capsys):
    result = run(_cfg(db))
    assert (result.source_rows, result.unscored_rows) == (N_POSTS, 0)
    assert "warning" not in capsys.readouterr().err
    assert "left out" not in format_report(result)
    assert summary(result)["unscored_share"] == 0
    assert result.skipped_rows == 0
    assert result.models_note == "" and summary(result)["models_note"] is None


def test_cli_json_and_report_carry_the_unscored_rows(db):
    _unscore(db, 20)
    res = _cli(db, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # the warning goes to stderr, the JSON alone to stdout
    assert (out["source_rows"], out["unscored_rows"]) == (N_POSTS, N_POSTS - 20)
    assert "trends: warning: 17 of 37 rows of 'posts' (45.9%) have no score" in res.stderr
    res = _cli(db)
    assert res.exit_code == 0, res.output
    assert "left out: 17 of 37 source rows (45.9%) that no model has scored" in res.stdout


# --- 2. scores in another file (score --results-db) -----------------------------------


def _apart(tmp_path, source_name="market.duckdb", results_name="results.duckdb"):
    """(source file with posts only, results file with scores/models/runs), as
    `score --db SOURCE --results-db RESULTS` leaves them; the results are written by the
    runtime's own writer (trends_fixtures)."""
    res_db = build_db(tmp_path / results_name)
    src_db = tmp_path / source_name
    with duckdb.connect(str(src_db)) as con:
        con.execute("ATTACH ? AS r", [str(res_db)])
        con.execute("CREATE TABLE posts AS SELECT * FROM r.posts")
        con.execute("DROP TABLE r.posts")
    return src_db, res_db


def test_trends_reads_scores_from_results_db_and_writes_to_db(tmp_path):
    reference = build_db(tmp_path / "together.duckdb")
    run(_cfg(reference, horizon=2))
    src_db, res_db = _apart(tmp_path)
    before = _objects(res_db)
    result = run(_cfg(src_db, results_db=res_db, text_col="text", horizon=2))
    assert _trend(src_db) == _trend(reference)  # the same trend as with the scores in db
    assert result.results_db == res_db and result.latest_view == ""
    written = _objects(src_db)
    assert {"trend_posts_day", "forecast_posts_day", "trend_drivers_posts_day"} <= written
    # no view in db names the other file's table: it would fail in every other client
    assert "latest_scores" not in written
    assert _objects(res_db) == before  # the results file is only read
    assert summary(result)["results_db"] == str(res_db)
    assert f"scores read from {res_db} (--results-db)" in format_report(result)


def test_cli_results_db(tmp_path):
    src_db, res_db = _apart(tmp_path)
    res = _cli(src_db, "--results-db", str(res_db), "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["results_db"] == str(res_db) and out["unscored_rows"] == 0
    with duckdb.connect(str(src_db), read_only=True) as con:
        assert con.execute("SELECT sum(volume) FROM trend_posts_day").fetchone()[0] == N_POSTS


def test_without_results_db_the_error_points_to_it(tmp_path):
    src_db, res_db = _apart(tmp_path)
    res = _cli(src_db)
    assert res.exit_code == 1
    assert f"table 'scores' not found in {src_db}; pass --scores-table" in res.output
    assert "--results-db FILE when `marketpulse score --results-db FILE` wrote" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    res = _cli(src_db, "--results-db", str(tmp_path / "nope.duckdb"))
    assert res.exit_code == 1
    assert f"results database {tmp_path / 'nope.duckdb'} not found" in res.output
    res = _cli(src_db, "--results-db", str(res_db), "--scores-table", "nope")
    assert res.exit_code == 1
    assert f"table 'nope' not found in {res_db} (--results-db; tables: models, " in res.output


def test_results_db_names_are_quoted_and_the_alias_never_clashes(tmp_path):
    """A results file and scores table with odd names; a db named like the alias."""
    src_db, res_db = _apart(tmp_path, "results_0.duckdb", "it's re sults.duckdb")
    with duckdb.connect(str(res_db)) as con:
        con.execute('ALTER TABLE scores RENAME TO "Market ""Scores"""')
    result = run(_cfg(src_db, results_db=res_db, scores_table='"Market ""Scores"""'))
    assert result.n_rows == 16 and result.unscored_rows == 0
    with pytest.raises(MarketpulseError, match=r"names a database, but with --results-db"):
        run(_cfg(src_db, results_db=res_db, scores_table="x.main.scores"))


def test_partly_scored_results_db_warns_with_the_command_that_finishes_it(tmp_path, capsys):
    src_db, res_db = _apart(tmp_path)
    with duckdb.connect(str(res_db)) as con:
        con.execute("DELETE FROM scores WHERE id > 30")
    result = run(_cfg(src_db, results_db=res_db))
    assert result.unscored_rows == N_POSTS - 30
    err = capsys.readouterr().err
    assert f"`marketpulse score --db {src_db} --table posts --results-db {res_db} ...`" in err


def test_a_results_db_held_by_a_writer_is_waited_for(tmp_path, capsys):
    """A scoring run holds the results file while it commits; trends waits it out."""
    src_db, res_db = _apart(tmp_path)
    hold = (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
        "print('held', flush=True); time.sleep(float(sys.argv[2])); con.close()"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", hold, str(res_db), "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "held"
        started = time.monotonic()
        result = run(_cfg(src_db, results_db=res_db, lock_timeout=60))
        assert time.monotonic() - started > 0.5
    finally:
        writer.wait(timeout=60)
    assert result.n_rows == 16
    assert f"trends: waiting for {res_db}" in capsys.readouterr().err
    writer = subprocess.Popen(
        [sys.executable, "-c", hold, str(res_db), "60"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "held"
        with pytest.raises(MarketpulseError, match="stayed locked by a writer"):
            run(_cfg(src_db, results_db=res_db, lock_timeout=0.3))
    finally:
        writer.terminate()
        writer.wait(timeout=60)


def test_cli_lock_timeout_bounds_the_wait_for_a_held_db(db):
    """A nightly trends run gives up after --lock-timeout with the fix, writing nothing."""
    hold = (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
        "print('held', flush=True); time.sleep(60); con.close()"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", hold, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "held"
        started = time.monotonic()
        out = _cli(db, "--lock-timeout", "0.5")
        assert time.monotonic() - started < 30
    finally:
        writer.terminate()
        writer.wait(timeout=60)
    assert out.exit_code != 0
    assert "stayed locked" in out.output and "--lock-timeout" in out.output
    assert "trend_posts_day" not in _objects(db)


def _recorded_source(db, source, source_db=None) -> None:
    """The fixture's runs now say they scored `source` of `source_db` (default: db)."""
    path = str(Path(source_db or db).resolve())
    with duckdb.connect(str(db)) as con:
        con.execute(
            "UPDATE runs SET results_table = 'scores', source = ?, source_db = ?, results_db = ?",
            [source, path, str(Path(db).resolve())],
        )


def test_scores_of_another_table_are_refused_before_anything_is_written(db):
    """Scores match rows by id alone: another table's scores would be a wrong trend."""
    _recorded_source(db, "posts_2023")
    with pytest.raises(MarketpulseError, match="holds the scores of table posts_2023") as exc:
        run(_cfg(db))
    with pytest.raises(MarketpulseError, match="holds the scores of table posts_2023"):
        run(_cfg(db, source="POSTS"))  # the table in another letter case is the table
    assert "--results-table posts_scores" in str(exc.value)
    assert "trend_posts_day" not in _objects(db)
    _recorded_source(db, "posts", source_db=db.parent / "other.duckdb")
    with pytest.raises(MarketpulseError, match="table posts of .*other.duckdb"):
        run(_cfg(db))


def test_the_scored_table_in_any_spelling_or_a_view_of_it_is_accepted(db):
    _recorded_source(db, "MAIN.Posts")
    assert run(_cfg(db)).n_rows == 16
    _recorded_source(db, "posts_2023")
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE VIEW posts_v AS SELECT * FROM posts")
    assert run(_cfg(db, source="posts_v")).n_rows == 16


# --- 3. default labels: any letter case, one model's pair -----------------------------


def _relabel(db) -> None:
    """The one model's labels become Positive / negative / NEUTRAL."""
    with duckdb.connect(str(db)) as con:
        con.execute(
            "UPDATE scores SET label = CASE label WHEN 'positive' THEN 'Positive' "
            "WHEN 'neutral' THEN 'NEUTRAL' ELSE label END"
        )
        con.execute("UPDATE models SET labels = ['NEUTRAL', 'Positive', 'negative']")


def _index(db):
    with duckdb.connect(str(db), read_only=True) as con:
        sql = "SELECT brand, bucket, net_index FROM trend_posts_day ORDER BY brand, bucket"
        return con.execute(sql).fetchall()


def test_default_labels_match_in_any_letter_case(db):
    run(_cfg(db))
    reference = _index(db)
    _relabel(db)
    result = run(_cfg(db))
    assert (result.positive, result.negative) == ("Positive", "negative")
    assert _index(db) == reference


def test_a_given_label_in_another_case_names_the_spelling(db):
    _relabel(db)
    with pytest.raises(
        MarketpulseError, match=r"they match case exactly\); pass --positive 'Positive'"
    ):
        run(_cfg(db, positive="positive"))


def _second_scheme(db, labels=("bearish", "bullish"), label="bullish") -> list[int]:
    """A newer model with other labels rescored brand A (every row `label`); return its ids."""
    with duckdb.connect(str(db)) as con:
        results.prepare(con, "scores", "INTEGER", list(labels))
        register_model(con, "9c61", datetime(2024, 3, 1), labels=list(labels))
        ids = [r[0] for r in con.execute("SELECT id FROM posts WHERE brand = 'A'").fetchall()]
        insert_scores(con, "9c61", [(i, label) for i in ids], labels=list(labels))
    return ids


def test_two_schemes_pair_labels_of_one_model_and_name_what_is_missing(db):
    _relabel(db)
    ids = _second_scheme(db)
    with pytest.raises(MarketpulseError) as err:
        run(_cfg(db))
    message = str(err.value)
    # the pair is the older model's (Positive, negative), never bullish with negative
    assert (
        f"{len(ids):,} rows come from model 9c61 (bearish, bullish), which has no 'Positive' "
        "or 'negative' label; score the whole table with one model (the newest, 9c61"
    ) in message
    assert "without 'bullish'" not in message and "\n" not in message
    assert "trend_posts_day" not in _objects(db)


def test_a_model_lacking_one_label_is_named_for_that_label_only(db):
    ids = _second_scheme(db, labels=("bullish", "negative", "neutral"))
    with pytest.raises(MarketpulseError) as err:
        run(_cfg(db))
    assert (
        f"{len(ids):,} rows come from model 9c61 (bullish, negative, neutral), which has no "
        "'positive' label;"
    ) in str(err.value)
    # every model has negative and neutral: the message offers them
    assert "or pass --positive/--negative with labels every model has (negative, neutral)" in str(
        err.value
    )
    result = run(_cfg(db, positive="neutral"))  # a pair both models have: fine
    assert (result.positive, result.negative) == ("neutral", "negative")


def test_no_model_with_both_sides_is_refused_by_name(db):
    """One model has only a positive default, the other only a negative one."""
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE scores SET label = 'neutral' WHERE label = 'negative'")
        con.execute("UPDATE models SET labels = ['neutral', 'positive']")
    _second_scheme(db, labels=("bearish", "neutral"), label="bearish")
    with pytest.raises(MarketpulseError, match="no one model has both a positive and a negative"):
        run(_cfg(db))


def test_two_spellings_of_a_label_across_models_are_refused(db):
    """`Neutral` from one model and `neutral` from another would both be n_neutral (DuckDB
    renamed the second n_neutral_1 and counted the first label in both)."""
    _second_scheme(db, labels=("negative", "Neutral", "positive"), label="Neutral")
    with pytest.raises(MarketpulseError) as err:
        run(_cfg(db))
    assert (
        "spell a label two ways: 'Neutral' (model 9c61) and 'neutral' (model v1) would share "
        "trend column n_neutral; score the whole table with one model (the newest, 9c61"
    ) in str(err.value)
    assert "trend_posts_day" not in _objects(db)


@pytest.mark.parametrize(
    ("labels", "positive", "negative"),
    [
        (["bullish", "bearish", "neutral"], None, "bullish"),
        (["Positive", "negative"], None, "Positive"),
        (["bullish", "bearish"], "bearish", None),
        (["bullish", "bearish"], "bullish", "bullish"),
    ],
)
def test_one_flag_naming_the_other_sides_default_is_refused(labels, positive, negative):
    from marketpulse.trends.labels import pick_labels

    with pytest.raises(MarketpulseError, match="would both be .* an index of 0 everywhere"):
        pick_labels([("v1", labels, 10)], positive, negative)


def test_suggested_commands_survive_a_shell_and_name_a_valid_table(tmp_path):
    """`--table "Market Posts"` pasted raw lost its quotes in the shell, and the suggested
    results table `Market Posts_scores` was one score refuses (review finding)."""
    from marketpulse.runtime.results import check_results_table_name
    from marketpulse.trends.notes import score_command

    cfg = trends_config(tmp_path / "my db.duckdb", source='"Market Posts"')
    command = score_command(cfg, "market_posts_scores")
    assert f"--db '{tmp_path}/my db.duckdb' --table '\"Market Posts\"'" in command
    assert command.endswith(" --results-table market_posts_scores ...")
    check_results_table_name("market_posts_scores")  # what the refusal suggests
    from marketpulse.trends.checks import _own_results_table

    digits = _own_results_table(trends_config(tmp_path / "m.duckdb", source='"2024 posts"'))
    check_results_table_name(digits)  # `2024_posts_scores` was refused
    same = trends_config(tmp_path / "m.duckdb", scores_table="posts_scores")
    assert _own_results_table(same) == "posts_scores_2"  # never the table it must not share


def test_a_killed_runs_scratch_tables_are_swept_by_the_next_run(db, tmp_path, monkeypatch):
    """The scratch file holds drivers' words from the texts; a kill -9 left it in /tmp."""
    import tempfile

    from marketpulse.owned_folders import STAGE_OWNER
    from marketpulse.trends.stage import SCRATCH_PREFIX

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{SCRATCH_PREFIX}dead_123"  # mkdtemp's 8 characters
    dead.mkdir()
    (dead / "work.duckdb").write_bytes(b"words of the texts")
    (dead / STAGE_OWNER).write_text("123\n")
    run(_cfg(db))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(SCRATCH_PREFIX)] == []
