"""marketpulse.cpu: the ISA that picks int8 kernels and the bf16 switch, from CPU flags."""

from __future__ import annotations

import pytest

from marketpulse import cpu


@pytest.mark.parametrize(
    ("flags", "isa", "bf16"),
    [
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}, "avx512_vnni", True),
        ({"avx2", "avx512f", "avx512bw"}, "avx512", False),
        ({"avx2", "amx_bf16", "amx_tile", "avx512_vnni"}, "avx512_vnni", True),
        ({"avx2", "fma"}, "avx2", False),
        ({"sse4_2"}, "generic", False),
    ],
)
def test_isa_and_bf16_from_flags(monkeypatch, flags, isa, bf16):
    monkeypatch.setattr(cpu, "flags", lambda: frozenset(flags))
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    assert cpu.isa() == isa
    assert cpu.native_bf16() is bf16
    assert isa in cpu.describe(2) and cpu.describe(2).endswith("2 cores")


def test_arm_is_named_by_the_platform(monkeypatch):
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert cpu.isa() == "arm64"


@pytest.mark.parametrize(
    ("flags", "cpu_tokens"),
    [({"avx2", "avx512_vnni", "amx_tile", "amx_int8"}, 512), ({"avx2", "avx512_vnni"}, 1024)],
)
def test_cpus_with_amx_score_in_smaller_batches(monkeypatch, flags, cpu_tokens):
    """Measured faster on AMX (predictor.AMX_BATCH_TOKENS); CUDA's default is the GPU's."""
    from marketpulse.inference import predictor

    monkeypatch.setattr(cpu, "flags", lambda: frozenset(flags))
    assert predictor.default_batch_tokens("cpu") == cpu_tokens
    assert predictor.default_batch_tokens("cuda") == predictor.DEFAULT_BATCH_TOKENS["cuda"]
