"""`--where` is rebuilt from DuckDB's parse tree: allowed filters work, everything else is refused."""

from __future__ import annotations

import duckdb
import pytest

from marketpulse.errors import MarketpulseError
from marketpulse.runtime.where import compile_where

COLUMNS = ["id", "text", "lang", "posted_at"]


@pytest.fixture
def con():
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE t AS SELECT i AS id, 'post ' || i AS text, "
        "CASE WHEN i % 2 = 0 THEN 'en' ELSE 'de' END AS lang, "
        "DATE '2024-01-01' + i::INTEGER AS posted_at FROM range(100) r(i)"
    )
    con.execute("CREATE TABLE secrets AS SELECT 1 AS id")
    return con


def count(con, expr):
    sql, params = compile_where(con, expr, COLUMNS)
    return con.execute(f"SELECT count(*) FROM t AS s WHERE {sql}", params).fetchone()[0]


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("lang = 'en' AND id >= 10", 45),
        ("posted_at >= DATE '2024-03-01'", 40),
        ("posted_at >= '2024-03-01'", 40),
        ("text ILIKE 'POST 1%' OR id IN (50, 51)", 13),
        ("NOT (id BETWEEN 10 AND 89) AND id % 2 = 1", 10),
        ("lower(LANG) <> 'de' AND text IS NOT NULL", 50),
        ("year(posted_at) = 2024 AND CAST(id AS VARCHAR) LIKE '9%'", 11),
        ("", 100),
    ],
)
def test_allowed_filters_select_the_right_rows(con, expr, expected):
    assert count(con, expr) == expected


def test_literals_become_parameters_not_sql(con):
    sql, params = compile_where(con, "text = 'x'' OR 1=1 --'", COLUMNS)
    assert sql == '(s."text" = ?)' and params == ["x' OR 1=1 --"]
    assert count(con, "text = 'x'' OR 1=1 --'") == 0


@pytest.mark.parametrize(
    "expr, message",
    [
        ("id IN (SELECT id FROM secrets)", "subquery"),
        ("EXISTS (SELECT 1 FROM secrets)", "subquery"),
        ("1=1; DROP TABLE t", "no ';' or other statements"),
        ("id = 1 LIMIT 1", "LIMIT"),
        ("id = 1 UNION SELECT * FROM secrets", "must be a single filter expression"),
        ("secrets.id = 1", "qualified name"),
        ("nope = 1", "column 'nope', which the source table lacks"),
        ("read_csv('/etc/passwd') IS NOT NULL", "the function read_csv"),
        ("getenv('HOME') = 'x'", "the function getenv"),
        ("id = ?", "parameter"),
        ("id = (", "not a valid filter"),
        ("count(*) > 1", "not allowed"),
        ("0E", "the number '0E'"),  # DuckDB parses it as a NUMERIC; Python's Decimal does not
    ],
)
def test_anything_else_is_refused_with_one_line(con, expr, message):
    with pytest.raises(MarketpulseError) as err:
        compile_where(con, expr, COLUMNS)
    assert message in str(err.value) and "\n" not in str(err.value)
