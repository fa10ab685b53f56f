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
