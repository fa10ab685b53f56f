"""`marketpulse trends` on the command line: outputs written, errors that name the fix."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from trends_fixtures import build_db

from marketpulse.cli import main


@pytest.fixture
def db(tmp_path):
    return build_db(tmp_path / "market.duckdb")


def _invoke(db, *extra):
    args = ["trends", "--db", str(db), "--source", "posts", "--id-col", "id"]
    args += ["--time-col", "posted_at", *extra]
    return CliRunner().invoke(main, args)


def test_trends_writes_table_exports_and_plot(db, tmp_path):
    csv, parquet, png = tmp_path / "t.csv", tmp_path / "t.parquet", tmp_path / "t.png"
    res = _invoke(
        db, "--by", "brand", "--grain", "day", "--window", "3", "--alpha", "0.1",
        "--csv", str(csv), "--parquet", str(parquet), "--plot", str(png),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    con = duckdb.connect(str(db), read_only=True)
    n, flagged = con.execute(
        "SELECT count(*), list(brand || ' ' || bucket) FILTER (WHERE is_shift) FROM trend_posts_day"
    ).fetchone()
    con.close()
    assert n == 16 and flagged == ["A 2024-01-08"]
    assert "Flagged shifts (p <= 0.1): 1" in res.output
    assert "A      2024-01-08  4       -0.750" in res.output
    assert pacsv.read_csv(csv).num_rows == 16
    table = pq.read_table(parquet)
    assert table.num_rows == 16 and "forecast_high" in table.column_names
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert f"wrote plot: {png}" in res.output


def test_rerun_refreshes_the_table(db):
    assert _invoke(db, "--by", "brand", "--grain", "day").exit_code == 0
    con = duckdb.connect(str(db))
    con.execute("DELETE FROM posts WHERE brand = 'B'")
    con.close()
    assert _invoke(db, "--by", "brand", "--grain", "day").exit_code == 0
    con = duckdb.connect(str(db), read_only=True)
    brands = con.execute("SELECT list(DISTINCT brand) FROM trend_posts_day").fetchone()[0]
    con.close()
    assert brands == ["A"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--by", "region"], "column 'region' not found in table 'posts'"),
        (["--positive", "bullish"], "--positive 'bullish' is not a label of the model"),
        (["--scores-table", "nope"], "table 'nope' not found"),
        (["--by", "volume"], "column 'volume' not found"),
    ],
)
def test_errors_name_the_fix(db, extra, message):
    res = _invoke(db, *extra)
    assert res.exit_code == 1
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_time_column_must_be_a_date(db):
    res = CliRunner().invoke(
        main,
        ["trends", "--db", str(db), "--source", "posts", "--id-col", "id", "--time-col", "id"],
    )
    assert res.exit_code == 1
    assert "column 'id' is INTEGER, not a date or timestamp; pass --time-col" in res.output
    con = duckdb.connect(str(db), read_only=True)
    tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    con.close()
    assert not any(t.startswith("trend_") for t in tables)


def test_unscored_source_and_missing_db(db, tmp_path):
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE fresh (id INTEGER, posted_at DATE)")
    con.execute("INSERT INTO fresh VALUES (999, DATE '2024-01-01')")
    con.close()
    res = CliRunner().invoke(
        main,
        [
            "trends",
            "--db",
            str(db),
            "--source",
            "fresh",
            "--id-col",
            "id",
            "--time-col",
            "posted_at",
        ],
    )
    assert res.exit_code == 1 and "no row of 'fresh' has a score" in res.output
    res = _invoke(tmp_path / "missing.duckdb")
    assert res.exit_code == 1 and "not found; pass --db" in res.output


def test_bad_choices_are_usage_errors(db):
    assert _invoke(db, "--grain", "hour").exit_code == 2
    assert _invoke(db, "--window", "1").exit_code == 2
    assert _invoke(db, "--alpha", "0").exit_code == 2
    assert _invoke(db, "--alpha", "1").exit_code == 2


@pytest.mark.parametrize(
    "column", ["volume", "label", "share_positive", "Volume", "Bucket", "Label", "N_Positive"]
)
def test_by_column_that_clashes_with_a_trend_column(db, column):
    con = duckdb.connect(str(db))
    con.execute(f'ALTER TABLE posts ADD COLUMN "{column}" INTEGER')
    con.close()
    res = _invoke(db, "--by", column)
    assert res.exit_code == 1 and f"--by column '{column}' clashes" in res.output
    con = duckdb.connect(str(db), read_only=True)
    written = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'trend_%'"
    ).fetchall()
    con.close()
    assert written == []  # refused before anything was written


def test_runtime_import_does_not_load_matplotlib():
    code = (
        "import sys, marketpulse.trends.stage, marketpulse.trends.plot; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_json_summary_for_jobs(db):
    import json

    res = _invoke(
        db, "--by", "brand", "--grain", "day", "--window", "3", "--alpha", "0.1", "--json"
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["trend_table"] == "trend_posts_day" and out["rows"] == 16
    assert [(r["brand"], r["bucket"]) for r in out["flagged"]] == [("A", "2024-01-08")]
    assert {r["brand"] for r in out["latest"]} == {"A", "B"}


def test_text_time_column_with_bad_values(db):
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE texty AS SELECT id, 'not a date' AS posted_at FROM posts")
    con.execute("CREATE TABLE iso AS SELECT id, CAST(posted_at AS VARCHAR) AS posted_at FROM posts")
    con.close()
    args = ["trends", "--db", str(db), "--id-col", "id", "--time-col", "posted_at"]
    res = CliRunner().invoke(main, [*args, "--source", "texty"])
    assert res.exit_code == 1
    assert "holds values that are not dates or timestamps" in res.output
    # the fix it names, for a blank time (common in CSV imports), works as written
    assert (
        'SELECT * REPLACE (NULLIF(trim("posted_at"), \'\') AS "posted_at") FROM texty' in res.output
    )
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE blanks AS SELECT id, CASE WHEN id % 3 = 0 THEN '' ELSE CAST(posted_at AS VARCHAR) END AS posted_at FROM posts")  # fmt: skip
    con.execute("CREATE VIEW blanks_fixed AS SELECT * REPLACE (NULLIF(trim(\"posted_at\"), '') AS \"posted_at\") FROM blanks")  # fmt: skip
    con.close()
    assert CliRunner().invoke(main, [*args, "--source", "blanks"]).exit_code == 1
    res = CliRunner().invoke(main, [*args, "--source", "blanks_fixed", "--grain", "day"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*args, "--source", "iso", "--grain", "day"])
    assert res.exit_code == 0, res.output
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT sum(volume) FROM trend_iso_day").fetchone()[0] == 37
    con.close()


def test_missing_source_names_the_source_flag(db):
    res = CliRunner().invoke(
        main,
        ["trends", "--db", str(db), "--source", "nope", "--id-col", "id", "--time-col", "x"],
    )
    assert res.exit_code == 1
    assert "table 'nope' not found" in res.output and "pass --source with" in res.output


def test_id_column_of_another_type_than_scores_id(db):
    res = CliRunner().invoke(
        main,
        ["trends", "--db", str(db), "--source", "posts", "--id-col", "text"]
        + ["--time-col", "posted_at"],
    )
    assert res.exit_code == 1, res.output
    assert "column 'text' of 'posts' is VARCHAR but scores.id is INTEGER" in res.output
    assert "pass --id-col" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_window_two_is_refused(db):
    res = _invoke(db, "--window", "2")
    assert res.exit_code == 2 and "2 is not in the range 3<=x<=104" in res.output


def test_buckets_are_utc_whatever_the_machine_zone(db):
    """A TIMESTAMPTZ and ISO text with an offset land in the week of their UTC instant,
    also on a machine in Tokyo (where Sunday 20:00 UTC is already Monday)."""
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE zoned AS SELECT id, "
        "CASE WHEN id <= 10 THEN TIMESTAMPTZ '2024-01-07 20:00:00+00' "
        "ELSE TIMESTAMPTZ '2024-01-08 10:00:00+00' END AS at_tz, "
        "CASE WHEN id <= 10 THEN '2024-01-08T05:00:00+09:00' "
        "ELSE '2024-01-08T10:00:00+00:00' END AS at_text FROM posts"
    )
    con.close()
    code = "from marketpulse.cli import main; main()"
    for column in ("at_tz", "at_text"):
        args = ["trends", "--db", str(db), "--source", "zoned", "--id-col", "id"]
        args += ["--time-col", column, "--horizon", "0", "--trend-table", "t_" + column]
        env = {**os.environ, "TZ": "Asia/Tokyo"}
        out = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr
        with duckdb.connect(str(db), read_only=True) as con:
            weeks = con.execute(f"SELECT bucket, volume FROM t_{column} ORDER BY 1").fetchall()
        assert [(str(b), v) for b, v in weeks] == [("2024-01-01", 10), ("2024-01-08", 27)]


@pytest.mark.parametrize("name", ["posts", "SCORES", "latest_scores"])
def test_trend_table_never_replaces_an_input(db, name):
    res = _invoke(db, "--trend-table", name)
    assert res.exit_code == 1 and "over its input" in res.output, res.output
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM posts").fetchone()[0] == 37
