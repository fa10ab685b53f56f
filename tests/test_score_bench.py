"""`make bench` runs end to end at a tiny size (the real run uses the fine-tuned model)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TWITTER, require_shared


@pytest.mark.slow
def test_bench_measures_all_four_and_writes_json(tiny_checkpoint, tiny_bundle, tmp_path):
    require_shared(TWITTER)
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "marketpulse.tools.bench",
        "--rows",
        "96",
        "--scale-rows",
        "300,600",
    ]
    cmd += ["--only", "abcd"]  # the Ray row is covered by tests/test_ray_engine.py
    cmd += ["--model", str(tiny_checkpoint), "--bundle", str(tiny_bundle.path)]
    cmd += ["--work", str(tmp_path / "work"), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(out.read_text())
    alts = res["alternatives"]
    assert set(alts) == {"a", "b", "c", "d"}
    for alt in alts.values():
        assert alt["rows"] == 96 and alt["rows_per_s"] > 0 and alt["peak_rss_mib"] > 50
        assert 0 <= alt["agreement_with_a"] <= 1
    assert alts["a"]["agreement_with_a"] == 1.0
    assert {"d/a", "d/b", "d/c", "agreement d vs a"} <= set(res["checks"])
    assert res["floor"]["int8_gops"] > 0 and 0 < res["floor"]["fraction_d"]
    assert [s["rows"] for s in res["scale"]] == [300, 600]
    assert "d/a" in run.stdout and "floor:" in run.stdout
