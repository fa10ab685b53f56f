"""`make isa-check`: the bundle's int8 graph under an emulated AVX2-only CPU (QEMU user mode).

Runs only where `qemu-x86_64` is installed (Debian's qemu-user); it checks that ONNX
Runtime's AVX2 int8 kernels (VPMADDUBSW, whose int16 sums can saturate) stay as close to
fp32 as the kernels of the machine that exported the bundle.
"""

from __future__ import annotations

import shutil

import pytest

from marketpulse.errors import MarketpulseError
from marketpulse.tools import isacheck

TEXTS = [
    "Stocks rally as earnings beat estimates",
    "Shares slump after the company cuts guidance",
    "The central bank holds rates steady",
    "Oil prices jump on supply worries",
    "Retailer misses revenue forecast; stock falls 8%",
    "Analysts upgrade the chipmaker to buy",
] * 5


def test_no_qemu_is_a_one_line_error_that_names_the_package(tiny_bundle, monkeypatch):
    monkeypatch.setattr(isacheck.shutil, "which", lambda name: None)
    with pytest.raises(MarketpulseError, match="apt-get install qemu-user") as err:
        isacheck.check(tiny_bundle.path, TEXTS)
    assert "\n" not in str(err.value)


def _export(checkpoint, out, isa):
    from marketpulse.export import ExportConfig, run

    cfg = ExportConfig(
        model=checkpoint,
        out=out,
        variants=("fp32", "int8"),
        int8_isa=isa,
        allow_accuracy_drop=True,
    )
    return run(cfg)


@pytest.fixture(scope="module")
def vnni_bundle(tiny_checkpoint, tmp_path_factory):
    """The riskier config whatever CPU runs the test: full-range weights, as a VNNI
    machine exports them, which AVX2's saturating int16 pair sums could clip."""
    bundle = _export(tiny_checkpoint, tmp_path_factory.mktemp("vnni") / "bundle", "avx512_vnni")
    assert bundle.manifest["variants"]["int8"]["quantization"]["reduce_range"] is False
    return bundle


@pytest.mark.skipif(shutil.which(isacheck.QEMU) is None, reason="needs qemu-x86_64 (qemu-user)")
def test_a_vnni_built_int8_graph_on_emulated_avx2_is_as_close_to_fp32_as_avx2s_own(
    vnni_bundle, tiny_checkpoint, tmp_path
):
    """Against the host's own kernels (meaningful on a VNNI host, where they differ) and
    against the AVX2 config under the same emulated AVX2 CPU (meaningful on any host)."""
    result = isacheck.check(vnni_bundle.path, TEXTS, timeout=600)
    native, emulated = result["int8_native"], result["int8_emulated"]
    assert result["rows"] == len(TEXTS)
    # Saturating int16 sums would put the emulated run far off fp32 on some rows.
    assert emulated["mean_prob_diff"] <= 2 * native["mean_prob_diff"] + 1e-3
    assert emulated["max_prob_diff"] <= 2 * native["max_prob_diff"] + 1e-2
    avx2 = _export(tiny_checkpoint, tmp_path / "avx2", "avx2")
    own = isacheck.check(avx2.path, TEXTS, timeout=600)["int8_emulated"]
    assert emulated["mean_prob_diff"] <= 2 * own["mean_prob_diff"] + 1e-3
    assert emulated["max_prob_diff"] <= 2 * own["max_prob_diff"] + 1e-2
