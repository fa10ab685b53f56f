"""`marketpulse trends` on inputs a user test found it mishandled: one line that names the
fix, refused before anything is written (real DuckDB files, scores written by the
runtime's own results writer)."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta

import duckdb
import pytest
from click.testing import CliRunner
from trends_fixtures import (
    build_db,
    create_results_tables,
    insert_scores,
    register_model,
    trends_config,
)

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.trends import run


def _invoke(db, *extra, source="posts", time_col="posted_at"):
    args = ["trends", "--db", str(db), "--source", source, "--id-col", "id"]
    return CliRunner().invoke(main, [*args, "--time-col", time_col, "--window", "3", *extra])


def _one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    return lines[0]


def _objects(db) -> dict[str, str]:
    """{name: 'table' or 'view'} of the main schema."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT table_name, 'table' FROM duckdb_tables() WHERE schema_name = 'main' "
            "UNION ALL SELECT view_name, 'view' FROM duckdb_views() "
            "WHERE schema_name = 'main' AND NOT internal"
        ).fetchall()
    return dict(rows)


def _posts_db(path, labels, *, extra_unscored=0):
    """posts(id, posted_at, text) with one row per label (None: the scorer skipped it, its
    text NULL), each scored by v1; then `extra_unscored` rows no model scored."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id INTEGER, posted_at TIMESTAMP, text VARCHAR)")
    rows = [
        [i + 1, datetime(2024, 1, 1) + timedelta(days=i), labels[i] if i < len(labels) else "x"]
        for i in range(len(labels) + extra_unscored)
    ]
    if rows:
        con.executemany("INSERT INTO posts VALUES (?, ?, ?)", rows)
    create_results_tables(con)
    register_model(con, "v1", datetime(2024, 1, 31))
    if labels:
        insert_scores(con, "v1", [(i + 1, lab) for i, lab in enumerate(labels)])
    con.close()
    return path


# --- 1. every row skipped by the scorer; an empty source -------------------------------


def test_every_row_skipped_by_the_scorer_says_so_not_the_time_column(tmp_path):
    db = _posts_db(tmp_path / "m.duckdb", [None] * 5)
    before = _objects(db)
    line = _one_line_error(_invoke(db))
    assert line.startswith(
        "Error: all 5 rows of 'posts' were skipped by the scorer (their text is NULL or "
        "empty: 5 empty_text), so no row has a label to trend; check the --text-col given "
        "to `marketpulse score`"
    ), line
    assert "DELETE FROM scores WHERE reason IS NOT NULL" in line
    assert "time" not in line.split(";")[0]  # the time column is not what is wrong
    assert _objects(db) == before  # nothing written, not even the latest_scores view


def test_every_scored_row_skipped_with_unscored_rows_counts_both(tmp_path):
    db = _posts_db(tmp_path / "m.duckdb", [None] * 3, extra_unscored=2)
    line = _one_line_error(_invoke(db, "--scores-table", "scores"))
    assert "all 3 scored rows of 'posts' (2 more have no score) were skipped" in line, line


def test_some_labels_without_a_time_still_blame_the_time_column(tmp_path):
    db = _posts_db(tmp_path / "m.duckdb", ["positive", None])
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE posts SET posted_at = NULL")
    line = _one_line_error(_invoke(db))
    assert "no scored row of 'posts' has a 'posted_at' (1 have it NULL" in line, line


def test_an_empty_source_says_it_has_no_rows(tmp_path):
    db = _posts_db(tmp_path / "m.duckdb", [])
    before = _objects(db)
    line = _one_line_error(_invoke(db))
    assert line == (
        f"Error: source 'posts' of {db} has no rows, so there is nothing to trend; pass "
        "--source with the table (or view) that holds the scored rows"
    )
    assert _objects(db) == before


# --- 2. a table (or the source) named like the latest-scores view --------------------


@pytest.mark.parametrize("name", ["latest_scores", "LATEST_Scores"])
def test_a_table_named_like_the_latest_view_is_refused_up_front(tmp_path, name):
    db = build_db(tmp_path / "m.duckdb")
    with duckdb.connect(str(db)) as con:  # a materialized copy, for BI speed
        con.execute(f"CREATE TABLE {name} AS FROM scores")
    before = _objects(db)
    with pytest.raises(MarketpulseError) as err:
        run(trends_config(db))
    message = str(err.value)
    assert message == (
        f"{db} has a table {name!r}, the name of the view trends keeps of the newest score "
        "per id in 'scores', so the run could not write that view; rename or drop the "
        f"table (e.g. ALTER TABLE {name} RENAME TO latest_scores_snapshot), or pass "
        "--scores-table with a results table of another name (its view is latest_<name>)"
    )
    assert _objects(db) == before  # no trend table, the user's table kept as it was
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == 37


def test_the_latest_view_name_follows_the_scores_table(tmp_path):
    db = build_db(tmp_path / "m.duckdb")
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE latest_s2 AS SELECT 1 AS x")
    assert run(trends_config(db)).latest_view == "latest_scores"  # latest_s2 is not it
    with duckdb.connect(str(db)) as con:
        con.execute("ALTER TABLE scores RENAME TO s2")
    with pytest.raises(MarketpulseError, match="has a table 'latest_s2'"):
        run(trends_config(db, scores_table="s2"))


def test_a_source_view_named_like_the_latest_view_is_refused_not_replaced(tmp_path):
    db = build_db(tmp_path / "m.duckdb")
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE VIEW latest_scores AS SELECT * FROM posts WHERE brand = 'A'")
    line = _one_line_error(_invoke(db, source="latest_scores"))
    assert line.startswith(
        "Error: --source 'latest_scores' has the name of the view trends makes of the newest "
        "score per id in 'scores' (latest_scores), which would stand in for the source; pass "
        "as --source the rows under another name"
    ), line
    assert "trend_latest_scores_week" not in _objects(db)
    with duckdb.connect(str(db), read_only=True) as con:  # the user's view, not replaced
        assert con.execute("SELECT count(*), min(brand) FROM latest_scores").fetchone() == (
            26,
            "A",
        )


def test_a_source_table_named_like_the_latest_view_is_refused_with_results_db(tmp_path):
    """With --results-db the view is temporary, yet it would still be read as the source."""
    results = build_db(tmp_path / "results.duckdb")
    db = tmp_path / "m.duckdb"
    shutil.copy(results, db)
    with duckdb.connect(str(db)) as con:
        con.execute("ALTER TABLE posts RENAME TO latest_scores")
    with pytest.raises(MarketpulseError, match="^--source 'latest_scores' has the name"):
        run(trends_config(db, source="latest_scores", results_db=results))


def test_with_results_db_a_table_named_like_the_view_in_db_is_left_alone(tmp_path):
    """The view is temporary then: nothing named latest_scores is written to --db."""
    results = build_db(tmp_path / "results.duckdb")
    db = tmp_path / "m.duckdb"
    shutil.copy(results, db)
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE latest_scores AS SELECT 7 AS kept")
    result = run(trends_config(db, results_db=results, horizon=0))
    assert result.latest_view == "" and result.n_rows == 16
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT kept FROM latest_scores").fetchall() == [(7,)]


# --- 3. messages that named the wrong rule or no fix ---------------------------------


def test_a_non_ascii_trend_table_names_the_ascii_rule(tmp_path):
    db = build_db(tmp_path / "m.duckdb")
    line = _one_line_error(_invoke(db, "--trend-table", "trend_börse"))
    assert line == (
        "Error: invalid --trend-table 'trend_börse'; use ASCII letters, digits and _, not "
        "starting with a digit (a table in the database's main schema)"
    )


def _epoch_db(path, scale: int, column_type: str = "BIGINT"):
    """build_db's posts with posted_at replaced by epoch_at: seconds x `scale`."""
    build_db(path)
    with duckdb.connect(str(path)) as con:
        con.execute(
            f"CREATE TABLE p2 AS SELECT * EXCLUDE (posted_at), "
            f"CAST(epoch(posted_at) * {scale} AS {column_type}) AS epoch_at FROM posts"
        )
        con.execute("DROP TABLE posts")
        con.execute("ALTER TABLE p2 RENAME TO posts")
    return path


def test_epoch_seconds_get_the_view_that_converts_them_and_it_works(tmp_path):
    db = _epoch_db(tmp_path / "m.duckdb", 1)
    before = _objects(db)
    line = _one_line_error(_invoke(db, time_col="epoch_at"))
    assert line == (
        "Error: column 'epoch_at' is BIGINT, not a date or timestamp; its values look like "
        "epoch seconds: pass as --source a view that converts it, e.g. SELECT * REPLACE "
        '(to_timestamp("epoch_at") AS "epoch_at") FROM posts (epoch_ms("epoch_at") if it '
        "holds milliseconds), or pass --time-col with a DATE, TIMESTAMP, TIMESTAMPTZ or "
        "ISO-8601 text column"
    )
    assert _objects(db) == before
    view = line.split("e.g. ", 1)[1].split(" (epoch_ms", 1)[0]
    with duckdb.connect(str(db)) as con:
        con.execute(f"CREATE VIEW posts_t AS {view}")
    res = _invoke(db, "--by", "brand", "--grain", "day", source="posts_t", time_col="epoch_at")
    assert res.exit_code == 0, res.output
    with duckdb.connect(str(db), read_only=True) as con:
        n, volume = con.execute("SELECT count(*), sum(volume) FROM trend_posts_t_day").fetchone()
    assert (n, volume) == (16, 37)


def test_epoch_milliseconds_get_epoch_ms(tmp_path):
    db = _epoch_db(tmp_path / "m.duckdb", 1000)
    line = _one_line_error(_invoke(db, time_col="epoch_at"))
    assert "its values look like epoch milliseconds: pass as --source a view that" in line
    assert 'SELECT * REPLACE (epoch_ms("epoch_at") AS "epoch_at") FROM posts' in line, line


def test_epoch_seconds_as_double_get_to_timestamp(tmp_path):
    db = _epoch_db(tmp_path / "m.duckdb", 1, "DOUBLE")
    line = _one_line_error(_invoke(db, time_col="epoch_at"))
    assert (
        "column 'epoch_at' is DOUBLE, not a date or timestamp; its values look like epoch" in line
    )
    assert '(to_timestamp("epoch_at" / 1000) if it holds milliseconds)' in line, line


def test_small_numbers_get_no_epoch_hint(tmp_path):
    db = build_db(tmp_path / "m.duckdb")
    line = _one_line_error(_invoke(db, time_col="id"))
    assert line == (
        "Error: column 'id' is INTEGER, not a date or timestamp; pass --time-col with a "
        "DATE, TIMESTAMP, TIMESTAMPTZ or ISO-8601 text column"
    )


def test_yyyymmdd_integers_get_strptime(tmp_path):
    db = build_db(tmp_path / "m.duckdb")
    with duckdb.connect(str(db)) as con:
        con.execute(
            "CREATE VIEW posts_d AS SELECT * EXCLUDE (posted_at), "
            "CAST(strftime(posted_at, '%Y%m%d') AS INTEGER) AS day FROM posts"
        )
    line = _one_line_error(_invoke(db, source="posts_d", time_col="day"))
    assert "its values look like yyyymmdd dates: pass as --source a view that converts it" in line
    view = line.split("e.g. ", 1)[1].split(", or pass", 1)[0]
    assert view == (
        'SELECT * REPLACE (strptime(CAST("day" AS VARCHAR), \'%Y%m%d\') AS "day") FROM posts_d'
    )
    with duckdb.connect(str(db)) as con:
        con.execute(f"CREATE VIEW posts_dd AS {view}")
    res = _invoke(db, "--grain", "day", source="posts_dd", time_col="day")
    assert res.exit_code == 0, res.output
