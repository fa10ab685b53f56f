"""Tables of one name in two schemas get trend tables of their own; a derived name that
two sources would share is refused, never written over."""

from __future__ import annotations

import json

import duckdb
import pytest
from click.testing import CliRunner
from trends_fixtures import build_db

from marketpulse.cli import main
from marketpulse.trends.queries import Database, same_source, source_note, table_name

# market.duckdb as DuckDB's catalog lists it: schemas main and s1
MARKET = Database("market", ("main", "s1"))


@pytest.fixture
def db(tmp_path):
    """posts (brands A and B) in main, its brand A rows in s1.posts and s1_posts, its brand
    B rows in s2.posts and "Market Data".select; one scores table covers every id."""
    path = build_db(tmp_path / "market.duckdb")
    with duckdb.connect(str(path)) as con:
        for schema in ("s1", "s2", '"Market Data"'):
            con.execute(f"CREATE SCHEMA {schema}")
        con.execute("CREATE TABLE s1.posts AS FROM posts WHERE brand = 'A'")
        con.execute("CREATE TABLE s1_posts AS FROM posts WHERE brand = 'A'")
        con.execute("CREATE TABLE s2.posts AS FROM posts WHERE brand = 'B'")
        con.execute('CREATE TABLE "Market Data"."select" AS FROM posts WHERE brand = \'B\'')
        con.execute('CREATE TABLE "select" AS FROM posts')
    return path


def _trends(db, source, *extra):
    args = ["trends", "--db", str(db), "--source", source, "--id-col", "id"]
    args += ["--time-col", "posted_at", "--by", "brand", "--grain", "day", *extra]
    return CliRunner().invoke(main, args)


def _brands(db, table):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT list(DISTINCT brand ORDER BY brand) FROM {table}").fetchone()[0]


def test_names_keep_the_schema_outside_main():
    assert table_name("trend", "posts", "week") == "trend_posts_week"
    assert table_name("trend", "main.posts", "week") == "trend_posts_week"
    assert table_name("trend", "MAIN.posts", "week") == "trend_posts_week"
    assert table_name("trend", "market.main.posts", "week", MARKET) == "trend_posts_week"
    assert table_name("trend", "s1.posts", "week") == "trend_s1_posts_week"
    assert table_name("forecast", "market.s1.posts", "day", MARKET) == "forecast_s1_posts_day"
    assert table_name("trend", '"Market Data".select', "week") == "trend_market_data_select_week"
    assert table_name("trend", "other.s1.posts", "week", MARKET) == "trend_other_s1_posts_week"


def test_a_two_part_name_is_a_schema_s_table_else_the_database_s_own():
    # market.posts in market.duckdb: catalog market, schema main, as DuckDB binds it
    assert table_name("trend", "market.posts", "week", MARKET) == "trend_posts_week"
    assert table_name("trend", "Market.posts", "week", MARKET) == "trend_posts_week"
    assert source_note("market.posts", MARKET) == "marketpulse trends of main.posts"
    assert same_source(source_note("posts", MARKET), "market.posts", MARKET) is True
    # a schema of that name is the schema (DuckDB refuses such a name as ambiguous)
    both = Database("market", ("main", "market"))
    assert table_name("trend", "market.posts", "week", both) == "trend_market_posts_week"
    # another name is a schema, found or not (DuckDB says which is missing)
    assert table_name("trend", "s2.posts", "week", MARKET) == "trend_s2_posts_week"
    assert table_name("trend", "market.posts", "week") == "trend_market_posts_week"


def test_the_source_note_names_a_table_as_duckdb_resolves_it():
    note = source_note("S1.Posts", MARKET)
    assert note == "marketpulse trends of S1.Posts"
    assert same_source(note, "s1.posts", MARKET) is True
    assert same_source(note, "market.s1.posts", MARKET) is True
    assert same_source(note, "s1_posts", MARKET) is False
    assert same_source(source_note("posts"), "main.posts") is True
    assert same_source(source_note('"My Posts"'), "my_posts") is False
    assert same_source(None, "posts") is None
    assert same_source("written by hand", "posts") is None


def test_one_table_name_in_two_schemas_keeps_both_trends(db):
    for source in ("s1.posts", "s2.posts", "posts"):
        res = _trends(db, source, "--json")
        assert res.exit_code == 0, res.output
    assert json.loads(res.output)["trend_table"] == "trend_posts_day"
    for kind in ("trend", "forecast"):
        assert _brands(db, f"{kind}_s1_posts_day") == ["A"]
        assert _brands(db, f"{kind}_s2_posts_day") == ["B"]
        assert _brands(db, f"{kind}_posts_day") == ["A", "B"]
    with duckdb.connect(str(db), read_only=True) as con:
        comments = dict(
            con.execute(
                "SELECT table_name, comment FROM duckdb_tables() WHERE table_name LIKE '%posts_day'"
            ).fetchall()
        )
    assert comments["trend_s1_posts_day"] == "marketpulse trends of s1.posts"
    assert comments["forecast_backtest_s2_posts_day"] == "marketpulse trends of s2.posts"
    assert comments["trend_posts_day"] == "marketpulse trends of main.posts"


def test_a_schema_with_spaces_and_a_main_table_of_the_same_name(db):
    res = _trends(db, '"Market Data".select', "--text-col", "text", "--alpha", "0.1")
    assert res.exit_code == 0, res.output
    assert "trend_market_data_select_day:" in res.output
    assert _trends(db, "main.select").exit_code == 0
    assert _brands(db, "trend_market_data_select_day") == ["B"]
    assert _brands(db, "trend_select_day") == ["A", "B"]


def test_a_name_two_sources_derive_is_refused_not_written_over(db):
    assert _trends(db, "s1.posts").exit_code == 0
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM s1_posts WHERE posted_at >= '2024-01-05'")
    res = _trends(db, "s1_posts")
    assert res.exit_code == 1
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert "trend_s1_posts_day of" in res.output
    assert "holds the trends of s1.posts" in res.output
    assert "pass --trend-table trend_main_s1_posts_day" in res.output
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM trend_s1_posts_day").fetchone()[0] == 8
    # the same source, spelled otherwise, replaces its own tables
    assert _trends(db, "S1.posts").exit_code == 0
    # the fix the message names keeps both
    res = _trends(db, "s1_posts", "--trend-table", "trend_main_s1_posts_day")
    assert res.exit_code == 0, res.output
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM trend_s1_posts_day").fetchone()[0] == 8
        assert con.execute("SELECT count(*) FROM trend_main_s1_posts_day").fetchone()[0] == 3


def test_the_other_way_round_and_a_table_from_before_the_notes(db):
    assert _trends(db, "s1_posts").exit_code == 0
    res = _trends(db, "s1.posts")
    assert res.exit_code == 1 and "holds the trends of main.s1_posts" in res.output
    assert "pass --trend-table trend_s1_posts_day_2" in res.output
    # a trend table without a note (an older marketpulse wrote it) is replaced as before
    with duckdb.connect(str(db)) as con:
        con.execute("COMMENT ON TABLE trend_s1_posts_day IS NULL")
        for kind in ("forecast", "forecast_backtest"):
            con.execute(f"COMMENT ON TABLE {kind}_s1_posts_day IS NULL")
    assert _trends(db, "s1.posts").exit_code == 0


def test_the_file_s_own_name_before_a_table_is_its_catalog_not_a_schema(db):
    """In market.duckdb, DuckDB reads `market.posts` as catalog market, schema main (there
    is no schema market): the same table as `posts`, so the same names, and one source."""
    assert db.stem == "market"
    for source in ("market.posts", "MARKET.posts", "market.main.posts", "posts"):
        res = _trends(db, source, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["trend_table"] == "trend_posts_day", source
    for source in ("market.s1.posts", "s1.posts"):
        res = _trends(db, source, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["trend_table"] == "trend_s1_posts_day", source
    with duckdb.connect(str(db), read_only=True) as con:
        assert Database.of(con) == Database("market", ("Market Data", "main", "s1", "s2"))
        comments = dict(
            con.execute(
                "SELECT table_name, comment FROM duckdb_tables() WHERE table_name LIKE '%_day'"
            ).fetchall()
        )
    assert not [t for t in comments if "market" in t], comments
    assert comments["trend_posts_day"] == "marketpulse trends of main.posts"
    assert comments["forecast_s1_posts_day"] == "marketpulse trends of s1.posts"
    assert _brands(db, "trend_posts_day") == ["A", "B"]
    assert _brands(db, "trend_s1_posts_day") == ["A"]


def test_scores_of_two_schemas_get_latest_views_of_their_own(db):
    """s1.scores and s2.scores once both wrote main.latest_scores, so the second run
    silently repointed the view the first one's queries join (user test)."""
    from marketpulse.trends.queries import latest_view_name

    assert latest_view_name("scores") == latest_view_name("main.scores") == "latest_scores"
    assert latest_view_name("s1.scores") == "latest_s1_scores"
    assert latest_view_name("market.scores", MARKET) == "latest_scores"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE s1.scores AS FROM scores")
        con.execute("CREATE TABLE s2.scores AS FROM scores")
        con.execute("UPDATE s2.scores SET label = 'neutral'")
    for schema in ("s1", "s2"):
        result = _trends(
            db, f"{schema}.posts", "--scores-table", f"{schema}.scores", "--horizon", "0"
        )
        assert result.exit_code == 0, result.output
    with duckdb.connect(str(db), read_only=True) as con:
        for schema in ("s1", "s2"):
            view, table = f"latest_{schema}_scores", f"{schema}.scores"
            differ = con.execute(
                f"SELECT count(*) FROM {view} v JOIN {table} t USING (id) WHERE v.label <> t.label"
            ).fetchone()[0]
            assert differ == 0, (view, table)
