"""The shift evaluation: its simulated series, the product run on them, and its verdict."""

from __future__ import annotations

import json

import duckdb
import pytest
from click.testing import CliRunner
from conftest import AMAZON, require_shared

from marketpulse.tools import shift_eval
from marketpulse.tools.demo_data import LABELS, read_snippets


def test_shocked_moves_the_net_index_by_delta():
    base = (0.5, 0.2, 0.3)  # index +0.2
    for delta in (0.1, -0.3, 0.6, -0.8, 0.8):
        pos, neu, neg = shift_eval.shocked(base, delta)
        assert (pos - neg) - (0.5 - 0.3) == pytest.approx(delta)
        assert pos + neu + neg == pytest.approx(1) and min(pos, neu, neg) >= 0


def test_build_db_writes_real_snippets_and_their_labels_as_scores(tmp_path):
    path = require_shared(AMAZON / "ground_truth.tsv")
    snippets = read_snippets(path)
    pool = {lab: [s.snippet_id for s in snippets if s.label == lab] for lab in LABELS}
    cfg = shift_eval.EvalConfig(snippets=path, seeds=1, weeks=12, series=4, shock_series=2)
    db = tmp_path / "eval.duckdb"
    shift_eval.build_db(db, cfg, pool, seed=0)
    human = {s.snippet_id: s.label for s in snippets}
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT p.snippet_id, s.label FROM posts p JOIN scores s USING (id)"
        ).fetchall()
        n_posts = con.execute("SELECT count(*) FROM posts").fetchone()[0]
        run = con.execute("SELECT status, rows_scored FROM runs").fetchone()
        kinds = dict(con.execute("SELECT kind, count(*) FROM series_truth GROUP BY ALL").fetchall())
        weeks = con.execute("SELECT count(DISTINCT date_trunc('week', posted_at)) FROM posts")
        n_weeks = weeks.fetchone()[0]
    assert len(rows) == n_posts > 1000
    assert all(human[sid] == label for sid, label in rows)  # the score is the human label
    assert run == ("completed", n_posts)
    no_shock = {"steady": 4, "wobble": 4, "permuted": 4, "one_label": 4}
    assert kinds == no_shock | {"shock": 2 * len(cfg.deltas)}
    assert n_weeks == 12


def test_eval_runs_the_trends_stage_and_reports(tmp_path):
    require_shared(AMAZON / "ground_truth.tsv")
    out = tmp_path / "eval.json"
    args = ["--data", str(AMAZON.parent), "--seeds", "1", "--series", "15"]
    args += ["--shock-series", "8", "--weeks", "12", "--alpha", "0.05", "--out", str(out)]
    res = CliRunner().invoke(shift_eval.main, args)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    w4 = report["windows"]["4"]
    assert w4["checks"] == dict.fromkeys(shift_eval.NULL_KINDS, 135)
    assert w4["detection"]["0.8"]["planted"] == 8
    assert w4["detection"]["0.8"]["is_shift"] >= 0.5  # the demo-sized shock is found
    for kind in shift_eval.NULL_KINDS:  # is_shift is the trends run's own column at alpha
        rates = w4["false_alarms_per_1000"][kind]
        assert rates["is_shift"] == rates["p <= 0.05"]
    assert "| 4 | p <= 0.05 (default) |" in res.output
    assert report["machine"] in res.output


def test_missing_data_names_the_flags(tmp_path):
    res = CliRunner().invoke(shift_eval.main, ["--data", str(tmp_path)])
    assert res.exit_code == 1
    assert "pass --data with the shared data folder or --snippets" in res.output


def _report(rates: dict[str, float], checks: int = 10_000) -> dict:
    return {
        "windows": {
            "4": {
                "checks": dict.fromkeys(shift_eval.NULL_KINDS, checks),
                "false_alarms_per_1000": {k: {"is_shift": r} for k, r in rates.items()},
            }
        }
    }


def test_verdict_rule():
    cfg = shift_eval.EvalConfig(snippets=None, alpha=0.01)
    fine = {"steady": 6, "wobble": 9, "permuted": 12, "one_label": 3}
    assert shift_eval._verdict(_report(fine), cfg) == []
    over = shift_eval._verdict(_report(fine | {"one_label": 25}), cfg)
    assert len(over) == 1 and "one_label: 25.0 false alarms" in over[0]
    under = shift_eval._verdict(_report(dict.fromkeys(fine, 2)), cfg)
    assert len(under) == 1 and "no longer means a rate" in under[0]


def test_p_value_sql_is_students_t():
    """The closed-form t tail in queries.py agrees with scipy for every df it writes out."""
    stats = pytest.importorskip("scipy.stats")
    from marketpulse.trends.queries import t_p_value_sql

    sql = t_p_value_sql("t", "df", range(1, 40))
    cases = [(t, df) for df in range(1, 40) for t in (0.0, 0.4, -1.5, 3.0, 8.0)]
    values = ", ".join(f"({t}, {df})" for t, df in cases)
    with duckdb.connect() as con:
        got = con.execute(f"SELECT t, df, {sql} FROM (VALUES {values}) AS v(t, df)").fetchall()
        assert len(got) == len(cases)
        for t, df, p in got:
            assert p == pytest.approx(2 * stats.t.sf(abs(float(t)), df), abs=1e-9)
        assert con.execute(f"SELECT {sql} FROM (SELECT NULL AS t, 3 AS df)").fetchone() == (None,)
        assert con.execute(f"SELECT {sql} FROM (SELECT 2.0 AS t, 40 AS df)").fetchone() == (None,)
