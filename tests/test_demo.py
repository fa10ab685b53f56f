"""The demo pipeline end to end at reduced size: real snippets, real model, planted shock found."""

from __future__ import annotations

import duckdb
import pytest
from click.testing import CliRunner
from conftest import AMAZON, require_shared

from marketpulse.tools import demo


def test_demo_help_is_instant_and_says_something():
    res = CliRunner().invoke(demo.main, ["--help"])
    assert res.exit_code == 0 and "planted shock" in res.output and "Example:" in res.output


@pytest.mark.slow
def test_fast_demo_flags_the_planted_shock_and_nothing_else(tmp_path):
    snippets = require_shared(AMAZON / "ground_truth.tsv")
    cfg = demo.DemoConfig.fast(out=tmp_path / "demo", snippets=snippets)
    result = demo.run(cfg)

    assert [(brand, week) for brand, week, _ in result.flagged] == [result.planted]
    assert result.planted == (cfg.stream.shock_brand, cfg.stream.shock_bucket)
    assert result.flagged[0][2] < 0  # a drop
    assert result.found
    assert result.stream_macro_f1 > 0.40  # the majority-class baseline is about 0.21
    assert result.plot.stat().st_size > 10_000
    con = duckdb.connect(str(result.db), read_only=True)
    n_posts, n_scored = con.execute(
        "SELECT count(*), count(s.label) FROM posts LEFT JOIN latest_scores s USING (id)"
    ).fetchone()
    shifts = con.execute("SELECT brand, bucket FROM trend_posts_week WHERE is_shift").fetchall()
    con.close()
    assert n_posts == n_scored == 4 * cfg.stream.weeks * cfg.stream.posts_per_week
    assert shifts == [result.planted]
