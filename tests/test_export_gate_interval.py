"""The export gate reports how precise its agreement figure is (a 95% Wilson interval)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")


def _logits(rows: int, disagree: int) -> tuple[np.ndarray, np.ndarray]:
    torch_logits = np.tile(np.array([[2.0, 0.0, -1.0]], dtype=np.float32), (rows, 1))
    onnx_logits = torch_logits.copy()
    onnx_logits[:disagree] = [[0.0, 2.0, -1.0]]  # top-1 moves from class 0 to class 1
    return onnx_logits, torch_logits


def test_compare_gives_the_wilson_interval_around_the_agreement():
    from marketpulse.export.checks import compare

    result = compare(*_logits(954, 11), ["a", "b", "c"], None)
    assert result["agreement"] == pytest.approx(943 / 954)
    low, high = result["agreement_interval"]
    # Wilson score interval for 943 of 954, worked by hand: centre and half-width
    p, n, z = 943 / 954, 954, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert low == pytest.approx(centre - half, abs=1e-9)
    assert high == pytest.approx(centre + half, abs=1e-9)
    assert low < 0.99 < high  # 954 rows cannot tell 98.85% from 99%


def test_full_agreement_still_has_an_interval_below_one():
    from marketpulse.export.checks import compare

    low, high = compare(*_logits(50, 0), ["a", "b", "c"], None)["agreement_interval"]
    assert high == pytest.approx(1.0) and low < 0.95  # 50 rows prove little


def test_gate_messages_and_summary_carry_the_interval():
    from marketpulse.export.checks import compare
    from marketpulse.export.summary import _check_line, describe_agreement

    result = compare(*_logits(954, 11), ["a", "b", "c"], None)
    assert describe_agreement(result) == "98.85% of 954 rows (95% interval 97.95%-99.35%)"
    assert describe_agreement(result, "check texts").endswith(
        "check texts (95% interval 97.95%-99.35%)"
    )
    assert _check_line(result).startswith("agreement 98.85% (95% interval 97.95%-99.35%)")
    del result["agreement_interval"]  # a bundle exported before the interval existed
    assert _check_line(result).startswith("agreement 98.85%, max |dlogit|")


def test_exported_manifest_records_the_interval(tiny_bundle):
    int8 = tiny_bundle.manifest["checks"]["variants"]["int8"]
    low, high = int8["agreement_interval"]
    assert low <= int8["agreement"] <= high
