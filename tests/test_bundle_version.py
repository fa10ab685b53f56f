"""model_version covers everything that changes a score (marketpulse/bundle.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marketpulse.bundle import MANIFEST, TOKENIZER, load_bundle, verify_bundle, write_manifest
from marketpulse.errors import MarketpulseError

LABELS = ["bearish", "bullish", "neutral"]


def _bundle(path: Path, *, graph=b"graph", tokenizer=b'{"truncation": 128}', max_length=128):
    """A bundle made of stand-in files: write_manifest hashes bytes, it never parses them."""
    path.mkdir(parents=True)
    (path / "model.fp32.onnx").write_bytes(graph)
    (path / TOKENIZER).write_bytes(tokenizer)
    manifest = {"labels": LABELS, "max_length": max_length, "variants": {"fp32": {}}}
    return write_manifest(path, manifest)["model_version"]


def test_same_files_and_settings_give_the_same_version(tmp_path):
    assert _bundle(tmp_path / "a") == _bundle(tmp_path / "b")


@pytest.mark.parametrize(
    "change",
    [
        {"max_length": 64},
        {"tokenizer": b'{"truncation": 64}'},
        {"graph": b"other graph"},
    ],
)
def test_anything_that_changes_a_score_changes_the_version(tmp_path, change):
    before = _bundle(tmp_path / "before")
    after = _bundle(tmp_path / "after", **change)
    assert after != before
    assert verify_bundle(tmp_path / "after") == []
    assert load_bundle(tmp_path / "after").version == after


def test_label_order_changes_the_version(tmp_path):
    before = _bundle(tmp_path / "before")
    path = tmp_path / "after"
    path.mkdir()
    (path / "model.fp32.onnx").write_bytes(b"graph")
    (path / TOKENIZER).write_bytes(b'{"truncation": 128}')
    manifest = {"labels": LABELS[::-1], "max_length": 128, "variants": {"fp32": {}}}
    assert write_manifest(path, manifest)["model_version"] != before


def test_editing_max_length_in_the_manifest_is_caught(tmp_path):
    _bundle(tmp_path / "b")
    manifest_path = tmp_path / "b" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["max_length"] = 512
    manifest_path.write_text(json.dumps(manifest))
    assert verify_bundle(tmp_path / "b") == [
        "manifest.json: model_version does not match the files, labels and max_length"
    ]
    with pytest.raises(MarketpulseError, match="corrupt"):
        load_bundle(tmp_path / "b")
