"""`explain` on a TIMESTAMPTZ-keyed table: the stored id is its UTC text whatever the TZ."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pytest
from test_runtime_support import spread_bundle

from marketpulse.runtime.explanations import id_text_sql

_RUN = """
import sys
from pathlib import Path
from marketpulse.runtime.explanations import ExplainConfig, explain_table
cfg = ExplainConfig(db=Path(sys.argv[1]), table="t_ts", id_col="id", text_col="text",
                    bundle=Path(sys.argv[2]), limit=2)
print(explain_table(cfg).rows)
"""


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


def _explain_under(tz: str, db, bundle) -> None:
    env = {**os.environ, "TZ": tz}
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(db), str(bundle.path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "2"


def _utc(db, sql):
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def test_one_stored_id_per_row_under_any_machine_time_zone(bundle, tmp_path):
    pytest.importorskip("presidio_analyzer")
    db = tmp_path / "tz.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE TABLE t_ts (id TIMESTAMPTZ, text VARCHAR)")
        con.execute(
            "INSERT INTO t_ts VALUES ('2026-05-28 20:56:40+00', 'oil slides on demand'), "
            "('2026-05-28 23:30:00.5+00', 'gold jumps')"
        )
    _explain_under("UTC", db, bundle)
    _explain_under("Asia/Tokyo", db, bundle)  # a rerun: replaces the rows, same ids
    _explain_under("America/New_York", db, bundle)
    ids = _utc(db, "SELECT DISTINCT id FROM explanations ORDER BY id")
    assert ids == [("2026-05-28 20:56:40+00",), ("2026-05-28 23:30:00.5+00",)]
    runs = _utc(db, "SELECT count(DISTINCT explained_at) FROM explanations")
    assert runs == [(1,)]  # the last run's rows only
    joined = _utc(
        db,
        "SELECT count(DISTINCT p.id), count(*) FROM explanations e JOIN t_ts p "
        "ON e.source = 't_ts' AND e.id = CAST(p.id AS VARCHAR)",
    )
    total = _utc(db, "SELECT count(*) FROM explanations")[0][0]
    assert joined == [(2, total)]


def test_rows_stored_in_another_zone_before_are_replaced(bundle, tmp_path):
    """An explanations table written by an earlier version under TZ=Asia/Tokyo holds
    `...05:56:40+09`: a rerun replaces those rows, it does not add a second id."""
    pytest.importorskip("presidio_analyzer")
    from marketpulse.runtime.explanations import ExplainConfig, explain_table

    db = tmp_path / "old.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE TABLE t_ts (id TIMESTAMPTZ, text VARCHAR)")
        con.execute("INSERT INTO t_ts VALUES ('2026-05-28 20:56:40+00', 'oil slides')")
    cfg = ExplainConfig(db=db, table="t_ts", id_col="id", text_col="text", bundle=bundle.path)
    explain_table(cfg)
    with duckdb.connect(str(db)) as con:  # as the old code stored it in Tokyo
        con.execute("UPDATE explanations SET id = '2026-05-29 05:56:40+09'")
    explain_table(cfg)
    assert _utc(db, "SELECT DISTINCT id FROM explanations") == [("2026-05-28 20:56:40+00",)]
    assert _utc(db, "SELECT count(*) FROM explanations") == [(2,)]


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/St_Johns", "UTC"])
def test_id_text_is_the_utc_cast_in_any_session_zone(zone):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE TABLE t AS SELECT * FROM (VALUES "
        "(make_timestamptz(2026, 5, 28, 20, 56, 40.000001, 'UTC')), "
        "(make_timestamptz(1, 1, 1, 3, 0, 0.25, 'UTC')), "
        "(make_timestamptz(-43, 3, 15, 10, 0, 0.0, 'UTC')), "
        "(make_timestamptz(20000, 1, 1, 3, 0, 0, 'UTC')), "
        "('infinity'::TIMESTAMPTZ), ('-infinity'::TIMESTAMPTZ), (NULL)) v(x)"
    )
    want = con.execute("SELECT CAST(x AS VARCHAR) FROM t").fetchall()
    con.execute(f"SET TimeZone = '{zone}'")
    sql = id_text_sql("x", "TIMESTAMP WITH TIME ZONE")
    assert con.execute(f"SELECT {sql} FROM t").fetchall() == want
    # other types: the plain cast
    assert id_text_sql("x", "BIGINT") == "CAST(x AS VARCHAR)"
    assert id_text_sql("x", "TIMESTAMP") == "CAST(x AS VARCHAR)"
