"""Shared helpers for the runtime tests: a tiny bundle, a source table.

Uses the export helper's `tiny_bundle` fixture when tests/conftest.py has it; until
then builds one the same way export does (optimum main_export + dynamic int8).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from marketpulse.bundle import write_manifest


def build_tiny_bundle(checkpoint: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    onnx_dir = out.parent / (out.name + "_onnx")
    main_export(str(checkpoint), output=str(onnx_dir), task="text-classification")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_dir / "model.onnx", out / "model.fp32.onnx")
    shutil.copy(onnx_dir / "tokenizer.json", out / "tokenizer.json")
    quantize_dynamic(
        str(out / "model.fp32.onnx"), str(out / "model.int8.onnx"), weight_type=QuantType.QInt8
    )
    labels = ["bearish", "bullish", "neutral"]
    write_manifest(out, {"labels": labels, "max_length": 64, "variants": {"fp32": {}, "int8": {}}})
    return out


def get_bundle_dir(request, tmp_path_factory) -> Path:
    try:
        value = request.getfixturevalue("tiny_bundle")
        return Path(getattr(value, "path", value))
    except pytest.FixtureLookupError:
        checkpoint = request.getfixturevalue("tiny_checkpoint")
        return build_tiny_bundle(checkpoint, tmp_path_factory.mktemp("rt") / "bundle")
