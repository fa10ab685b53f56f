"""The export stage, top to bottom: checkpoint -> ONNX graphs -> checked bundle.

    graphs    optimum export (fp32), ORT optimization, int8 quantization (calibrated on
              rows the gate does not check: `calibration_source`), fp16 conversion
    staging   graphs + tokenizer.json + labels written to a hidden sibling of --out
    checks    fp32 parity with PyTorch, then agreement and macro-F1 per variant, on the
              test split and on the check texts (a sample of what will be scored)
    publish   manifest with the results, then one rename puts the bundle in place

A failed check raises before publishing (parity always, a test-split drop unless
--allow-accuracy-drop), so --out never holds a half-written or unchecked bundle: it
keeps whatever it held before. A variant that fails on the check texts is published
marked as failed instead (publish.py says why).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from marketpulse import variants as registry
from marketpulse.bundle import MANIFEST, TOKENIZER, Bundle
from marketpulse.checkpoint import (
    VALIDATION_SPLIT,
    Checkpoint,
    load_checkpoint,
    read_validation_split,
)
from marketpulse.errors import MarketpulseError
from marketpulse.export.builders import Built, Sources, builder_for
from marketpulse.export.checks import (
    CheckSample,
    CheckSource,
    CheckTexts,
    load_check_texts,
    read_check_sample,
)
from marketpulse.export.graphs import (
    DEFAULT_OPSET,
    INT8_ISAS,
    INT8_ORDERS,
    OPTIMIZATION_LEVELS,
)
from marketpulse.export.log import log
from marketpulse.export.outliers import CALIBRATION_ROWS, Calibration
from marketpulse.export.publish import check_and_publish
from marketpulse.staging import publishable
from marketpulse.text import is_blank

# From `python -m marketpulse.tools.export_measure CHECKPOINT --rows 477` (CHECKPOINT:
# MiniLM-L6 fine-tuned on tweets, 2 shared AVX512-VNNI cores, ORT_ENABLE_ALL at load):
# fp32 none/O1/O2 within noise (98-105 rows/s, parity <= 5e-6); O3's gelu approximation
# breaks parity (7.4e-3). int8 is ~2x fp32 at 99.58% agreement for none/O1/O2; O1 then
# quantize was fastest (209 best, 187 median). Quantizing the O2-fused graph (QAttention)
# agrees slightly more (99.79%) but was slower (171 median). These figures predate
# splitting the widest FFN channels off in float (outliers.py).
DEFAULT_OPTIMIZATION = "O1"
DEFAULT_INT8_ORDER = "optimize-then-quantize"
LIBRARIES = (
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "tokenizers",
)


@dataclass(frozen=True)
class ExportConfig:
    model: Path
    out: Path
    variants: tuple[str, ...] = registry.NAMES
    min_agreement: float = 0.99
    max_f1_drop: float = 0.01
    allow_accuracy_drop: bool = False
    parity_tolerance: float = 1e-4
    optimization: str = DEFAULT_OPTIMIZATION
    int8_order: str = DEFAULT_INT8_ORDER
    opset: int = DEFAULT_OPSET
    max_length: int | None = None  # None: the checkpoint's (Checkpoint.max_length)
    test_rows: int | None = None  # cap on test-split rows checked; None: all
    check_source: CheckSource | None = None  # texts like those scored; None: test split only
    int8_isa: str = "auto"  # the CPU kind int8 is quantized for; auto: this machine's (cpu.isa())

    def __post_init__(self):
        object.__setattr__(self, "variants", registry.parse(self.variants))
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise MarketpulseError(
                f"unknown --optimization {self.optimization!r}; pass one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if self.int8_isa not in INT8_ISAS:
            raise MarketpulseError(
                f"unknown --int8-isa {self.int8_isa!r}; pass one of {', '.join(INT8_ISAS)}"
            )
        if self.int8_order not in INT8_ORDERS:
            raise MarketpulseError(
                f"unknown --int8-order {self.int8_order!r}; pass one of {', '.join(INT8_ORDERS)}"
            )


def calibration_source(
    trained: Checkpoint, texts: CheckTexts, sample: CheckSample | None
) -> tuple[list[str], str]:
    """The texts int8's outlier channels and static ranges are calibrated on, and a line
    for the manifest saying which.

    Rows the gate does not check, so its agreement is measured out of sample: the text
    the bundle will score when it is known (further rows of the check source), else the
    checkpoint's validation split. Only a checkpoint without one (from before train
    saved it, or not from `marketpulse train`) calibrates on the gated texts.
    """
    if sample is not None and sample.calibration:
        return sample.calibration, (
            f"{len(sample.calibration)} further sampled rows of {sample.source} "
            "(disjoint from the check texts)"
        )
    validation = read_validation_split(trained)
    if validation is not None and any(not is_blank(t) for t in validation[0]):
        return validation[0], (
            f"{VALIDATION_SPLIT} ({len(validation[0])} rows, disjoint from the gated texts)"
        )
    if sample is not None:
        return sample.texts, f"{sample.source} (also gated)"
    return texts.texts, f"{texts.source} (also gated)"


def run(cfg: ExportConfig) -> Bundle:
    """Export, check and publish a bundle; raise MarketpulseError when a check fails."""
    trained = load_checkpoint(Path(cfg.model).resolve())
    checkpoint = trained.path
    out = Path(cfg.out).resolve()
    max_length = cfg.max_length or trained.max_length
    check_out_dir(out)
    texts = load_check_texts(trained, cfg.test_rows)  # bad split: fail before work
    sample = read_check_sample(cfg.check_source, CALIBRATION_ROWS) if cfg.check_source else None
    if sample is not None:
        log(
            f"check texts: {len(sample.texts)} rows of {sample.source} ({sample.fingerprint}), "
            f"{len(sample.calibration)} more to calibrate int8"
        )
    calibration_texts, calibrated_on = calibration_source(trained, texts, sample)
    log(f"int8 calibrates on {calibrated_on}")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        write_tokenizer(checkpoint, staging / TOKENIZER, max_length)
        with tempfile.TemporaryDirectory(prefix="marketpulse-export-") as work:
            calibration = Calibration(staging / TOKENIZER, max_length, calibration_texts)
            graphs = build_graphs(checkpoint, Path(work), cfg, calibration)
            for variant, built in graphs.items():
                shutil.move(built.path, staging / registry.get(variant).file)
        manifest = base_manifest(cfg, trained, max_length, graphs)
        manifest["calibration_texts"] = calibrated_on
        publishable(staging)  # mkdtemp made it private; a bundle is read by other users
        return check_and_publish(cfg, checkpoint, texts, sample, staging, out, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_graphs(
    checkpoint: Path, work: Path, cfg: ExportConfig, calibration: Calibration
) -> dict[str, Built]:
    """The reference graph, then each other variant of `cfg.variants` from its builder."""
    from marketpulse.export import graphs

    start = time.perf_counter()
    fp32 = graphs.export_fp32(checkpoint, work, cfg.opset)
    log(
        f"exported {checkpoint} with optimum (opset {cfg.opset}) in {time.perf_counter() - start:.0f}s"
    )
    optimized = graphs.optimize(fp32, cfg.optimization, work / f"fp32-{cfg.optimization}")
    out = {registry.REFERENCE: Built(optimized, {}, "")}
    for name in cfg.variants:
        if name == registry.REFERENCE:
            continue
        built = builder_for(name)(Sources(fp32, optimized, cfg, work / name, calibration))
        log(built.log)
        out[name] = built
    return out


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MarketpulseError(f"--out {out} is a file; pass a directory path for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise MarketpulseError(
            f"--out {out} is a non-empty directory that is not a bundle; pass a new or empty "
            "directory (an existing bundle there is replaced)"
        )


def write_tokenizer(checkpoint: Path, dest: Path, max_length: int) -> None:
    """tokenizer.json with truncation at max_length and pad-to-longest (pad id recorded)."""
    from tokenizers import Tokenizer

    source = checkpoint / TOKENIZER
    if not source.is_file():
        raise MarketpulseError(
            f"{checkpoint} has no {TOKENIZER} (fast tokenizer); save it next to the model "
            "with AutoTokenizer.from_pretrained(...).save_pretrained(DIR)"
        )
    tokenizer = Tokenizer.from_file(str(source))
    pad_token = _pad_token(checkpoint)
    pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad_token)
    tokenizer.save(str(dest))


def _pad_token(checkpoint: Path) -> str:
    """The pad token transformers saved with the tokenizer ([PAD] for BERT)."""
    path = checkpoint / "special_tokens_map.json"
    token = json.loads(path.read_text()).get("pad_token") if path.is_file() else None
    if isinstance(token, dict):
        token = token.get("content")
    return token or "[PAD]"


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def base_manifest(
    cfg: ExportConfig, checkpoint: Checkpoint, max_length: int, graphs: dict[str, Built]
) -> dict[str, Any]:
    from marketpulse import __version__

    variants = {
        name: {"provider": registry.get(name).provider, **built.manifest}
        for name, built in graphs.items()
    }
    return {
        "labels": list(checkpoint.labels),
        "max_length": max_length,
        "variants": variants,
        "source_checkpoint": str(checkpoint.path),
        "base_model": checkpoint.base_model,
        "opset": cfg.opset,
        "optimization": {"level": cfg.optimization, "int8_order": cfg.int8_order},
        "libraries": library_versions(),
        "marketpulse_version": __version__,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
