"""One builder per non-reference variant, named by `marketpulse.variants` (`builder`).

Every builder takes the same `Sources` (the raw and the optimized fp32 graphs, the
export config, a scratch directory, the calibration texts) and returns the graph it
made plus what the manifest should say about it. The registry's entry adds the file
name and the provider; `stage.build_graphs` calls the builders in registry order.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marketpulse import cpu
from marketpulse import variants as registry
from marketpulse.export.outliers import (
    CALIBRATION_ROWS,
    OUTLIER_CHANNELS,
    SMOOTH_ALPHA,
    Calibration,
)


@dataclass(frozen=True)
class Sources:
    fp32: Path  # optimum's export, unoptimized
    optimized: Path  # fp32 at cfg.optimization: the bundle's reference graph
    cfg: Any  # ExportConfig
    work: Path  # scratch directory for this variant
    calibration: Calibration


@dataclass(frozen=True)
class Built:
    path: Path
    manifest: dict[str, Any]  # the variant's entry in manifest.json, minus file and provider
    log: str  # one line for the export log


def builder_for(name: str):
    """The builder function the registry names for variant `name`."""
    module, function = registry.get(name).builder.split(":")
    return getattr(importlib.import_module(module), function)


def build_int8(src: Sources) -> Built:
    from marketpulse.export import graphs

    cfg = src.cfg
    isa = cpu.isa() if cfg.int8_isa == "auto" else cfg.int8_isa
    path = graphs.make_int8(
        src.fp32, src.optimized, cfg.optimization, cfg.int8_order, isa, src.work, src.calibration
    )
    qc = graphs.quantization_config(isa)
    manifest = {
        "quantization": {
            "mode": "static",
            "format": graphs.QUANT_FORMAT,
            "cpu_isa": isa,  # the CPU kind the config is for (--int8-isa)
            "exported_on": cpu.isa(),  # the CPU whose kernels ran the gate
            "per_channel": qc.per_channel,
            "reduce_range": qc.reduce_range,
            "weights": str(qc.weights_dtype.name),
            "activations": str(qc.activations_dtype.name),
            "activations_symmetric": qc.activations_symmetric,
            "calibration": {
                "method": graphs.CALIBRATION_METHOD,
                "moving_average": graphs.CALIBRATION_MOVING_AVERAGE,
                "rows": len(src.calibration.used()),
                "padding": "none: one exact token length per batch",
            },
            "nodes": "MatMul with a weight operand (outputs kept float32); embeddings, "
            "fused Attention and activation x activation MatMuls stay float32, and so do "
            f"the FFN output projection's {OUTLIER_CHANNELS} widest-ranged input channels "
            f"per layer (measured on the same up to {CALIBRATION_ROWS} calibration texts), "
            "split into MatMuls named *_outliers; the LayerNorm outputs feeding Q, K, V and "
            f"FFN1 are smoothed (SmoothQuant, alpha {SMOOTH_ALPHA}: divided per channel, "
            "the weights multiplied back)",
        },
    }
    log = (
        f"int8: static quantization for {isa} (per-channel weights, {graphs.CALIBRATION_METHOD} "
        f"{'moving-average ' if graphs.CALIBRATION_MOVING_AVERAGE else ''}activation scales from {len(src.calibration.used())} texts), {cfg.int8_order} at "
        f"{cfg.optimization}"
    )
    return Built(path, manifest, log)


def build_fp16(src: Sources) -> Built:
    from marketpulse.export import graphs

    path = graphs.convert_fp16(src.fp32, src.work)
    return Built(
        path,
        {"io_types": "int64 in, float32 out"},
        "fp16: fused for CUDA, float16 weights, int64 inputs and float32 logits kept",
    )
