"""Every ```sql block in the README's "Trends from SQL" section runs against a built database."""

from __future__ import annotations

import re
from datetime import date

import duckdb
import pytest
from conftest import REPO
from trends_fixtures import build_weekly_db

from marketpulse.trends.stage import TrendsConfig, run


def _sql_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Trends from SQL\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README lost its '## Trends from SQL' section"
    return re.findall(r"```sql\n(.*?)```", section.group(1), re.S)


BLOCKS = _sql_blocks()


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    # 26 weeks: long enough for the forecast backtest and its bands (10 past errors)
    db = build_weekly_db(tmp_path_factory.mktemp("readme") / "market.duckdb", weeks=26)
    run(
        TrendsConfig(
            db=db, source="posts", id_col="id", time_col="posted_at", by=("brand",), text_col="text"
        )
    )
    con = duckdb.connect(str(db), read_only=True)
    yield con
    con.close()


def test_readme_has_the_queries():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("sql", BLOCKS, ids=[f"query{i + 1}" for i in range(len(BLOCKS))])
def test_readme_query_runs_and_returns_rows(con, sql):
    rows = con.execute(sql).fetchall()
    assert rows, sql


def test_readme_queries_give_the_expected_answers(con):
    results = {i: con.execute(sql).fetchall() for i, sql in enumerate(BLOCKS)}
    by_text = dict(zip(BLOCKS, results.values(), strict=True))
    flagged = [rows for sql, rows in by_text.items() if "WHERE is_shift" in sql]
    assert flagged and [(r[0], r[1]) for r in flagged[0]] == [("A", date(2024, 2, 5))]
    latest = [rows for sql, rows in by_text.items() if "QUALIFY" in sql]
    assert latest and [(r[0], r[1], r[2]) for r in latest[0]] == [
        ("A", date(2024, 6, 24), 20),
        ("B", date(2024, 6, 24), 20),
    ]
    ahead = [rows for sql, rows in by_text.items() if "FROM forecast_posts_week" in sql]
    assert ahead and [(r[0], r[2]) for r in ahead[0]] == [
        (b, s) for b in "AB" for s in (1, 2, 3, 4)
    ]
    assert all(r[5] <= r[4] <= r[6] for r in ahead[0])  # forecast inside its 80% band
    skill = [rows for sql, rows in by_text.items() if "FROM forecast_backtest_posts_week" in sql]
    assert skill and [r[0] for r in skill[0]] == ["A", "B"]
    assert all(r[1] is not None and r[2] is not None and r[5] for r in skill[0])
    why = [rows for sql, rows in by_text.items() if "FROM trend_drivers_posts_week" in sql]
    assert why and {(r[0], r[1], r[2]) for r in why[0]} == {("A", date(2024, 2, 5), "negative")}
    assert why[0][0][4] == "negative post"  # the fixture's negative posts say so
    behind = [rows for sql, rows in by_text.items() if "LIMIT 5" in sql]
    assert behind and len(behind[0]) == 5 and {r[0] for r in behind[0]} == {"A"}


def test_readme_score_queries_run_against_a_real_scoring_run(tiny_bundle, tmp_path):
    from marketpulse.runtime import ScoreConfig, score

    text = (REPO / "README.md").read_text()
    section = re.search(r"^### 3\. Score.*?\n(.*?)(?=^##)", text, re.S | re.M)
    assert section, "README lost its '### 3. Score' section"
    queries = [
        q.strip()
        for block in re.findall(r"```sql\n(.*?)```", section.group(1), re.S)
        for q in block.split(";\n")
        if q.strip()
    ]
    assert len(queries) >= 2
    db = tmp_path / "market.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(
            "CREATE TABLE posts AS SELECT i AS id, 'post number ' || i AS text FROM range(50) t(i)"
        )
    score(
        ScoreConfig(
            db=db,
            table="posts",
            id_col="id",
            text_col="text",
            bundle=tiny_bundle.path,
            progress=False,
        )
    )
    with duckdb.connect(str(db), read_only=True) as con:
        for sql in queries:
            rows = con.execute(sql).fetchall()
            assert rows, sql
        assert sum(r[1] for r in con.execute(queries[0]).fetchall()) == 50
