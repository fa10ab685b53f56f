"""The demo (marketpulse.tools.demo): its verdict and exit status, its flags, and the
pipeline end to end at reduced size on real snippets with a real model."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from conftest import AMAZON, require_shared

from marketpulse.tools import demo
from marketpulse.tools.demo_data import LABELS

PLANTED = ("Contoso", date(2026, 7, 20))


def _result(flagged) -> demo.DemoResult:
    return demo.DemoResult(
        db=Path("market.duckdb"),
        plot=Path("trends.png"),
        planted=PLANTED,
        flagged=flagged,
        train_macro_f1=0.7,
        stream_macro_f1=0.6,
        wall_s=1.0,
    )


def test_demo_help_is_instant_and_says_something():
    res = CliRunner().invoke(demo.main, ["--help"])
    assert res.exit_code == 0 and "planted shock" in res.output and "Example:" in res.output
    assert "MARKETPULSE_DATA" in res.output and "../shared/data" in res.output


@pytest.mark.parametrize(
    "flagged, found, says",
    [
        (
            [("Contoso", date(2026, 7, 20), -4.24)],
            True,
            ["FOUND: marketpulse flagged Contoso, week of 2026-07-20 (z = -4.2).", "No other"],
        ),
        ([], False, ["MISSED: marketpulse did not flag Contoso, week of 2026-07-20."]),
        (
            [("Contoso", date(2026, 7, 20), -4.24), ("Globex", date(2026, 6, 8), 3.14)],
            False,
            ["FOUND", "Also flagged (not planted): Globex 2026-06-08 (z +3.1)."],
        ),
        ([("Contoso", date(2026, 7, 27), -3.5)], False, ["MISSED", "Also flagged"]),
    ],
)
def test_verdict_and_exit_status_say_whether_only_the_planted_week_was_flagged(
    monkeypatch, tmp_path, flagged, found, says
):
    result = _result(flagged)
    assert result.found is found
    text = demo._verdict(result, demo.DemoConfig(), "trend_posts_week", tmp_path / "t.csv")
    assert all(line in text for line in says), text

    monkeypatch.setattr(demo, "run", lambda cfg: result)
    res = CliRunner().invoke(demo.main, ["--out", str(tmp_path / "demo")])
    assert res.exit_code == (0 if found else 1), res.output


def test_flags_reach_the_config_with_cwd_relative_defaults(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(demo, "run", lambda cfg: seen.append(cfg) or _result([(*PLANTED, -4)]))
    runner = CliRunner()
    assert runner.invoke(demo.main, []).exit_code == 0
    assert (
        runner.invoke(demo.main, ["--fast"], env={"MARKETPULSE_DATA": str(tmp_path)}).exit_code == 0
    )
    assert runner.invoke(demo.main, ["--data", "elsewhere"]).exit_code == 0
    default, fast, flag = seen
    assert (default.out, default.cache) == (Path("artifacts/demo"), Path("artifacts/cache"))
    assert default.shared_data == Path("../shared/data") == demo.DemoConfig().shared_data
    assert fast.shared_data == tmp_path and fast.train_rows == demo.DemoConfig.fast().train_rows
    assert flag.shared_data == Path("elsewhere")


@pytest.mark.slow
def test_fast_demo_flags_the_shock_in_its_data_and_reports_numbers_from_the_db(tmp_path):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    snippets = require_shared(AMAZON / "ground_truth.tsv")
    out = tmp_path / "demo"
    args = ["--fast", "--snippets", str(snippets), "--out", str(out)]
    res = CliRunner().invoke(demo.main, [*args, "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output

    con = duckdb.connect(str(out / "market.duckdb"), read_only=True)
    # Where the shock is, read from the posts the simulation wrote, not from its config:
    # the brand-week with the largest share of truly negative posts.
    planted = con.execute(
        "SELECT p.brand, date_trunc('week', p.posted_at)::DATE FROM posts p "
        "JOIN posts_truth t USING (id) GROUP BY ALL "
        "ORDER BY avg((t.true_label = 'negative')::INT) DESC LIMIT 1"
    ).fetchone()
    shifts = con.execute(
        "SELECT brand, bucket, z_score FROM trend_posts_week WHERE is_shift"
    ).fetchall()
    n_posts, n_labeled, n_ids = con.execute(
        "SELECT count(*), count(s.label), count(DISTINCT s.id) "
        "FROM posts p LEFT JOIN latest_scores s USING (id)"
    ).fetchone()
    pairs = con.execute(
        "SELECT t.true_label, s.label FROM posts_truth t JOIN latest_scores s USING (id)"
    ).fetchall()
    con.close()

    # The model's labels, not the true ones, drove the trends: one shift, the planted one.
    assert [(brand, week) for brand, week, _ in shifts] == [planted]
    z = shifts[0][2]
    assert z < 0  # a drop
    brand, week = planted
    assert f"FOUND: marketpulse flagged {brand}, week of {week} (z = {z:+.1f})." in res.output
    assert "No other brand or week was flagged." in res.output

    stream = demo.DemoConfig.fast().stream
    assert (
        n_posts == n_labeled == n_ids == len(stream.brands) * stream.weeks * stream.posts_per_week
    )
    # the reported stream macro-F1 is the scores table's labels against the truth table's
    truth, predicted = zip(*pairs, strict=True)
    f1 = sklearn_metrics.f1_score(truth, predicted, labels=list(LABELS), average="macro")
    assert f"{f1:.3f} on the stream's snippets" in res.output
    assert f1 > 0.40  # the majority-class baseline is about 0.21
    assert (out / "trends.png").stat().st_size > 10_000
