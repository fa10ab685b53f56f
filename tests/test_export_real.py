"""Export a checkpoint fine-tuned from the bundled base model on real tweets (slow)."""

from __future__ import annotations

import pytest
from conftest import TWITTER, require_shared

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    train_csv = require_shared(TWITTER / "train.csv")
    from marketpulse.train import DataSource, TrainConfig, run

    source = DataSource(
        query=f"SELECT text, label FROM read_csv('{train_csv}') ORDER BY hash(text) LIMIT 400",
        label_names=("bearish", "bullish", "neutral"),
    )
    cfg = TrainConfig(
        source=source,
        out=tmp_path_factory.mktemp("real") / "checkpoint",
        max_length=64,
        epochs=1,
        batch_size=16,
        split=(0.7, 0.1, 0.2),
        device="cpu",
    )
    return run(cfg).path


def test_real_checkpoint_exports_with_parity_and_agreement(real_checkpoint, tmp_path):
    from marketpulse.bundle import load_bundle
    from marketpulse.export import ExportConfig, run

    # One epoch on 280 rows leaves some near-tied logits, so a flip or two under int8
    # is tolerated here; the full model's agreement is in the export note.
    run(
        ExportConfig(
            model=real_checkpoint,
            out=tmp_path / "bundle",
            variants=("fp32", "int8"),
            allow_accuracy_drop=True,
        )
    )
    bundle = load_bundle(tmp_path / "bundle")
    checks = bundle.manifest["checks"]
    assert checks["texts"] == "test_split.parquet (80 rows)"
    assert bundle.max_length == 64
    assert bundle.manifest["base_model"].endswith("model")
    fp32 = checks["variants"]["fp32"]
    assert fp32["max_abs_logit_diff"] <= 1e-4
    assert fp32["agreement"] == 1.0
    assert fp32["macro_f1"] == pytest.approx(checks["pytorch"]["macro_f1"])
    int8 = checks["variants"]["int8"]
    assert int8["agreement"] >= 0.95
    assert abs(int8["f1_drop"]) <= 0.05
