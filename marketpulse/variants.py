"""The export variants: the one registry the CLI, export, publish and the runtime read.

A variant is one ONNX graph of the same model, made for one device:

    fp32   the reference graph; parity with PyTorch is proven on it; runs anywhere
    int8   static int8 for the CPU provider (a row scores the same in any batch)
    fp16   float16 for the CUDA provider (int64 inputs and float32 logits kept)

Each entry says what the graph is called in a bundle, which device it is made for and
so which execution provider runs it, what `--help` says of it, and which function of
the export stage builds it (`builder`, "module:function", imported only by export).
The runtime prefers, per device, the variants made for that device in registry order,
then the reference graph. `score --variant auto` (AUTO) instead times the graphs a CPU
can run (`preference("cpu")`) on this machine and runs the fastest that passed export's
gate (marketpulse/runtime/autovariant.py); on CUDA it keeps the preference.

Adding a variant: one entry here, its builder in export/builders.py (same signature as
the others: see `marketpulse.export.stage.build_graphs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from marketpulse.errors import MarketpulseError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PROVIDERS = {"cpu": CPU, "cuda": CUDA}


@dataclass(frozen=True)
class Variant:
    name: str
    device: str  # "any" (the reference), "cpu" or "cuda": where it is meant to run
    help: str
    builder: str | None  # "module:function" in the export stage; None for the reference

    @property
    def file(self) -> str:
        """The graph's file name inside a bundle."""
        return f"model.{self.name}.onnx"

    @property
    def provider(self) -> str:
        """The execution provider it is made for, as the manifest records it."""
        return PROVIDERS.get(self.device, "any")


_REGISTRY = (
    Variant("fp32", "any", "fp32 (reference, any device)", None),
    Variant(
        "int8",
        "cpu",
        "int8 (CPU; static scales, batch-independent)",
        "marketpulse.export.builders:build_int8",
    ),
    Variant("fp16", "cuda", "fp16 (CUDA)", "marketpulse.export.builders:build_fp16"),
)
VARIANTS: dict[str, Variant] = {v.name: v for v in _REGISTRY}
NAMES: tuple[str, ...] = tuple(VARIANTS)
REFERENCE = "fp32"
AUTO = "auto"  # score's default: chosen per machine by measurement, not a graph
CHOICES: tuple[str, ...] = (AUTO, *NAMES)  # what score's --variant takes


def get(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise MarketpulseError(
            f"unknown variant {name!r}; pass one of {', '.join(NAMES)}"
        ) from None


def parse(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Check a list of variants to export: known names, and the reference among them."""
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise MarketpulseError(
            f"unknown variants {unknown or list(names)}; pass --variants as a comma list of "
            f"{', '.join(NAMES)}"
        )
    if REFERENCE not in names:
        raise MarketpulseError(
            f"--variants must include {REFERENCE}: it is the reference graph parity is proven on"
        )
    return tuple(v for v in NAMES if v in names)


def preference(device: str) -> tuple[str, ...]:
    """Graphs to run on `device` ("cpu" or "cuda"), best first."""
    if device not in PROVIDERS:
        raise MarketpulseError(f"no variant preference for device {device!r}; use cpu or cuda")
    made_for = tuple(v.name for v in _REGISTRY if v.device == device)
    return made_for + (REFERENCE,)


def check_device(name: str) -> str:
    """The device an export check runs `name` on: its own, the CPU for the reference."""
    device = get(name).device
    return "cpu" if device == "any" else device
