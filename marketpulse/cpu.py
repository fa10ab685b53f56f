"""What this machine's CPU can do, read once from /proc/cpuinfo (Linux) or the platform.

Export picks its int8 quantization config by `isa()`, training picks bf16 autocast by
`native_bf16()`, and every benchmark figure is printed next to `isa()`.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


@functools.cache
def flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports; empty where there is no /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def isa() -> str:
    """The instruction set that decides int8 kernels: avx512_vnni, avx512, avx2, arm64 or generic."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    cpu = flags()
    if "avx512_vnni" in cpu:
        return "avx512_vnni"
    if "avx512f" in cpu and "avx512bw" in cpu:
        return "avx512"
    if "avx2" in cpu:
        return "avx2"
    return "generic"


def native_bf16() -> bool:
    """True when bf16 matrix multiplies run in hardware (AVX512-BF16 or AMX), not emulated."""
    return bool(flags() & {"avx512_bf16", "amx_bf16"})


def has_amx() -> bool:
    """Whether the CPU has AMX tiles (Intel Sapphire Rapids on): int8 and bf16 matrix
    multiplies in tiles, which shift what batch size runs fastest."""
    return "amx_tile" in flags()


@functools.cache
def model_name() -> str:
    """The CPU's marketing name ("AMD EPYC", "Intel Xeon ..."), or the platform's machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def describe(cores: int | None = None) -> str:
    """One line naming the machine kind for benchmark figures: name, ISA, bf16, and the
    cores this process may use (`cores`, default `available_cores()`)."""
    parts = [model_name(), isa()]
    if native_bf16():
        parts.append("native bf16")
    if has_amx():
        parts.append("AMX")
    parts.append(f"{cores or available_cores()} cores")
    return ", ".join(parts)
