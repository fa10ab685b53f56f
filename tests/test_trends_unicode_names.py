"""Tables trends derives from a source named in another script keep its letters
(`投稿`: trend_投稿_week), so two such sources get tables of their own; an ASCII name
keeps the name it always had."""

from __future__ import annotations

import duckdb
import pytest
from click.testing import CliRunner
from trends_fixtures import build_weekly_db

from marketpulse.cli import main
from marketpulse.results_schema import sanitize
from marketpulse.trends.queries import (
    DEPENDENT_KINDS,
    dependent_tables,
    latest_view_name,
    name_part,
    table_name,
)

SOURCES = ("投稿", "评论")


@pytest.fixture
def db(tmp_path):
    """build_weekly_db's posts as 投稿 (brand A) and 评论 (brand B), with Chinese column
    names; one scores table covers every id."""
    path = build_weekly_db(tmp_path / "market.duckdb")
    with duckdb.connect(str(path)) as con:
        for source, brand in zip(SOURCES, ("A", "B"), strict=True):
            con.execute(
                f'CREATE TABLE "{source}" AS SELECT id, brand AS 品牌, posted_at AS 发布时间, '
                f"text AS 正文 FROM posts WHERE brand = '{brand}'"
            )
    return path


def _trends(db, source, *extra):
    args = ["trends", "--db", str(db), "--source", source, "--id-col", "id"]
    args += ["--time-col", "发布时间", "--by", "品牌", "--grain", "week", "--window", "3"]
    return CliRunner().invoke(main, [*args, *extra])


def _tables(db):
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def test_names_keep_letters_of_any_script():
    assert table_name("trend", "投稿", "week") == "trend_投稿_week"
    assert table_name("trend", "main.评论", "day") == "trend_评论_day"
    assert table_name("trend_drivers", "投稿", "week") == "trend_drivers_投稿_week"
    assert (
        table_name("forecast_backtest", "销售.投稿", "week") == "forecast_backtest_销售_投稿_week"
    )
    assert table_name("trend", '"Börse Daten"', "month") == "trend_börse_daten_month"
    assert table_name("trend", '"投稿-2026"', "week") == "trend_投稿_2026_week"
    assert latest_view_name("评分") == "latest_评分"
    assert dependent_tables("trend_投稿_week")["forecast"] == "forecast_投稿_week"


@pytest.mark.parametrize(
    "name", ["posts", "Posts", '"My Posts"', "s1.posts", '"posts-2026"', "MAIN.Scores_2", "x.y.z"]
)
def test_an_ascii_name_keeps_the_name_it_had(name):
    # what table_name/latest_view_name derived before: sanitize of every part
    for part in name.replace('"', "").split("."):
        assert name_part(part) == sanitize(part)
    old = "_".join(sanitize(p) for p in name.replace('"', "").split("."))
    old = old[len("main_") :] if old.startswith("main_") else old
    assert table_name("trend", name, "week") == f"trend_{old}_week"


def test_two_chinese_sources_write_tables_of_their_own(db):
    for source in SOURCES:
        res = _trends(db, source, "--text-col", "正文")
        assert res.exit_code == 0, res.output
        assert f"trend_{source}_week" in res.output
    tables = _tables(db)
    for source in SOURCES:
        assert f"trend_{source}_week" in tables
        for kind in DEPENDENT_KINDS:
            assert f"{kind}_{source}_week" in tables, (kind, sorted(tables))
    assert not {t for t in tables if "____" in t}
    with duckdb.connect(str(db), read_only=True) as con:
        # the README's queries, the names written unquoted as a SQL client would
        for source, brand in zip(SOURCES, ("A", "B"), strict=True):
            got = con.execute(
                f"SELECT DISTINCT 品牌 FROM trend_{source}_week WHERE volume > 0"
            ).fetchall()
            assert got == [(brand,)]
            shifts = con.execute(
                f"SELECT count(*) FROM trend_{source}_week WHERE is_shift"
            ).fetchone()[0]
            assert shifts >= 0
            comment = con.execute(
                "SELECT comment FROM duckdb_tables() WHERE table_name = ?",
                [f"trend_{source}_week"],
            ).fetchone()[0]
            assert comment == f"marketpulse trends of main.{source}"
        assert con.execute("SELECT count(*) FROM latest_scores").fetchone()[0] == 320


def test_an_ascii_source_keeps_its_table_name(db):
    res = _trends(db, "posts", "--by", "brand", "--time-col", "posted_at")
    assert res.exit_code == 0, res.output
    assert "trend_posts_week" in _tables(db)


def test_a_clash_of_derived_names_is_refused_with_an_ascii_suggestion(db):
    with duckdb.connect(str(db)) as con:
        con.execute('CREATE TABLE "投-稿" AS FROM "投稿"')
        con.execute('CREATE TABLE "投_稿" AS FROM "投稿"')
    res = _trends(db, '"投-稿"')
    assert res.exit_code == 0, res.output
    res = _trends(db, "投_稿")
    assert res.exit_code == 1, res.output
    assert "holds the trends of main." in res.output, res.output
    assert "pass --trend-table trend_source2_week" in res.output, res.output
    assert _trends(db, "投_稿", "--trend-table", "trend_source2_week").exit_code == 0
