"""Inputs trends refuses or warns about before they mislead: a --by column named like a
forecast column, a stray time at either end of the bucket grid or later than now,
infinite times, and a --db that is not a DuckDB file."""

from __future__ import annotations

import re

import duckdb
import pytest
from click.testing import CliRunner
from trends_fixtures import build_db, trends_config

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.trends import format_report, queries, run, summary


@pytest.fixture
def db(tmp_path):
    return build_db(tmp_path / "market.duckdb")


def _cli(db, *extra):
    args = ["trends", "--db", str(db), "--source", "posts", "--id-col", "id"]
    args += ["--time-col", "posted_at", "--grain", "day", "--window", "3"]
    return CliRunner().invoke(main, [*args, *extra])


def _tables(db) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def _sql(db, sql: str) -> None:
    with duckdb.connect(str(db)) as con:
        con.execute(sql)


# --- a --by column named like a forecast or backtest column ---------------------------


@pytest.mark.parametrize(
    "column", ["model", "Step", "forecast", "lo_95", "mae", "points", "chosen"]
)
def test_a_by_column_named_like_a_forecast_column_is_refused_with_forecasts(db, column):
    _sql(
        db, f'ALTER TABLE posts ADD COLUMN "{column}" VARCHAR; UPDATE posts SET "{column}" = brand'
    )
    before = _tables(db)
    res = _cli(db, "--by", column, "--horizon", "2")
    assert res.exit_code == 1
    assert f"--by column '{column}' clashes with a forecast column" in res.output
    assert "--horizon 0" in res.output and len(res.output.strip().splitlines()) == 1
    assert _tables(db) == before  # refused before anything was written
    res = _cli(db, "--by", column, "--horizon", "0")  # no forecast tables: no clash
    assert res.exit_code == 0, res.output
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute(f'SELECT DISTINCT "{column}" FROM trend_posts_day ORDER BY 1').fetchall() == [("A",), ("B",)]  # fmt: skip


def test_the_forecast_columns_checked_are_the_ones_written(db):
    pytest.importorskip("statsforecast")
    result = run(trends_config(db, horizon=2))
    with duckdb.connect(str(db), read_only=True) as con:
        for table, expected in (
            (result.forecast_table, queries.FORECAST_COLUMNS),
            (result.backtest_table, queries.BACKTEST_COLUMNS),
        ):
            cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
            assert tuple(cols[1:]) == expected  # after the --by column


# --- a stray time at either end of the grid, or later than now -----------------------


def test_a_stray_last_bucket_is_named_with_its_rows_and_the_fix(db, capsys):
    # a day/month swap: 2024-01-03 read as 2024-03-01, after posts that end 2024-01-08
    _sql(db, "UPDATE posts SET posted_at = TIMESTAMP '2024-03-01 09:00' WHERE id = 1")
    result = run(trends_config(db, horizon=0))
    note = result.sparse_note
    assert "1 row in the last day bucket (2024-03-01) lies 52 empty buckets after the rest " in note
    assert "(which ends 2024-01-08)" in note and "every group's latest bucket" in note
    assert "check that column, or pass as --source a view that filters 'posted_at'" in note
    assert f"trends: warning: {note}" in capsys.readouterr().err
    assert f"warning: {note}" in format_report(result) and summary(result)["sparse_note"] == note


def test_a_stray_first_run_of_buckets_is_named_whatever_the_grid_size(db):
    _sql(db, "UPDATE posts SET posted_at = TIMESTAMP '2023-12-01' + to_days(CAST(id AS INT)) WHERE id <= 2")  # fmt: skip
    note = run(trends_config(db, horizon=0)).sparse_note
    assert (
        "2 rows in the first day buckets (2023-12-02 to 2023-12-03) lie 28 empty buckets " in note
    )
    assert "before the rest (which starts 2024-01-01)" in note
    assert "latest" not in note


def test_a_gap_of_window_empty_buckets_is_not_a_stray(db):
    _sql(db, "UPDATE posts SET posted_at = TIMESTAMP '2024-01-12 09:00' WHERE id = 1")  # 3 empty
    assert run(trends_config(db, horizon=0)).sparse_note == ""
    _sql(db, "UPDATE posts SET posted_at = TIMESTAMP '2024-01-13 09:00' WHERE id = 1")  # 4 empty
    assert "lies 4 empty buckets after the rest" in run(trends_config(db, horizon=0)).sparse_note


def test_times_later_than_now_are_named(db):
    # move the posts so that the last day's (4 rows, day 8) fall tomorrow: no gap
    _sql(db, "UPDATE posts SET posted_at = posted_at + to_days(CAST(current_date - DATE '2024-01-07' AS INT))")  # fmt: skip
    note = run(trends_config(db, horizon=0)).sparse_note
    found = re.search(r"(\d+) rows have a 'posted_at' later than now \(the latest ", note)
    assert found and int(found.group(1)) >= 4, note
    assert "empty buckets" not in note


# --- times with no bucket, and a --db that is not a database --------------------------


@pytest.mark.parametrize("value", ["'infinity'", "'-infinity'"])
@pytest.mark.parametrize("kind", ["TIMESTAMP", "TIMESTAMPTZ", "DATE", "VARCHAR"])
def test_infinite_times_are_refused_in_one_line_that_names_the_fix(db, kind, value):
    _sql(db, f"CREATE TABLE p2 AS SELECT * REPLACE (CAST(posted_at AS {kind}) AS posted_at) FROM posts")  # fmt: skip
    _sql(db, f"UPDATE p2 SET posted_at = {value} WHERE id IN (1, 2)")
    before = _tables(db)
    res = _cli(db, "--source", "p2", "--horizon", "0")
    assert res.exit_code == 1
    assert "column 'posted_at' of 'p2' holds 2 time(s) that are not finite" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert _tables(db) == before
    fix = re.search(r"\(e\.g\. (SELECT .*? FROM p2)\)", res.output).group(1)
    _sql(db, f"CREATE VIEW p2_fixed AS {fix}")  # the fix it names works as written
    res = _cli(db, "--source", "p2_fixed", "--horizon", "0", "--json")
    assert res.exit_code == 0, res.output
    assert '"null_time_rows": 2' in res.output


def test_a_db_that_is_not_duckdb_is_one_line_naming_the_flag(tmp_path):
    junk = tmp_path / "notes.duckdb"
    junk.write_text("hello\n")
    res = _cli(junk, "--horizon", "0")
    assert res.exit_code == 1
    assert f"cannot open {junk} as a DuckDB database" in res.output and "pass --db" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    with pytest.raises(MarketpulseError, match="pass --db with the DuckDB file"):
        run(trends_config(junk))
