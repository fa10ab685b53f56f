"""The export stage, top to bottom: checkpoint -> ONNX graphs -> checked bundle.

    graphs    optimum export (fp32), ORT optimization, int8 quantization (calibrated on
              rows the gate does not check when there are enough: `calibration_source`),
              fp16 conversion
    staging   graphs + tokenizer.json + labels written to a hidden sibling of --out
              (graphs built in the temp folder first; both folders are `owned_folder`s,
              so the next export removes those a killed one left: `sweep_dead_runs`)
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
from collections.abc import Iterator
from contextlib import contextmanager
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
    CHECK_ROWS,
    CheckSample,
    CheckSource,
    CheckTexts,
    imprecise_gate_warning,
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
from marketpulse.export.outliers import CALIBRATION_ROWS, MIN_CALIBRATION_ROWS, Calibration
from marketpulse.export.publish import check_and_publish
from marketpulse.owned_folders import owned_folder, sweep_dead_runs
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
# The twitter model's int8 graph against fp32 (2,388 valid.csv tweets and 3,708 review
# snippets, three bundles of two models): rescoring rows within 0.2 rescored 0.8-3.3% of
# them and lifted agreement from 99.1-99.3% to 99.65-100%; a weak model (the demo's,
# macro-F1 0.6) hesitates more: 14.6% rescored, 99.17% -> 100% (README, Export).
DEFAULT_RESCORE_MARGIN = 0.2
DEFAULT_INT8_ORDER = "optimize-then-quantize"
# the graphs' work folder in the temp folder ($TMPDIR), removed when the export ends
WORK_PREFIX = "marketpulse-export-"
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
    # int8 rows whose top two probabilities are closer than this are rescored by fp32
    # (recorded in the manifest; the gate judges int8 so); 0: never
    rescore_margin: float = DEFAULT_RESCORE_MARGIN

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
        if not 0 <= self.rescore_margin < 1:
            raise MarketpulseError(
                f"--rescore-margin {self.rescore_margin} is outside 0..1; pass 0 to never "
                f"rescore, or a probability gap such as {DEFAULT_RESCORE_MARGIN}"
            )
        if self.int8_order not in INT8_ORDERS:
            raise MarketpulseError(
                f"unknown --int8-order {self.int8_order!r}; pass one of {', '.join(INT8_ORDERS)}"
            )


def calibration_source(
    trained: Checkpoint,
    texts: CheckTexts,
    sample: CheckSample | None,
    max_gated: int = CHECK_ROWS,
) -> tuple[list[str], str, CheckSample | None]:
    """The texts int8's outlier channels and static ranges are calibrated on, a line for
    the manifest saying which, and the check sample to gate on; logs the choice.

    Rows the gate does not check, so its agreement is measured out of sample: the text
    the bundle will score when it is known (further rows of the check source), else the
    checkpoint's validation split. A check source that cannot spare MIN_CALIBRATION_ROWS
    would set the ranges from too few texts (from one, they are garbage): the validation
    split calibrates instead, and the gate gets every check text (up to `max_gated`, the
    --check-rows cap). A checkpoint without a validation split (from before train saved
    it, or not from `marketpulse train`) calibrates on the few further check texts there
    are, with a warning, and without check texts on the very texts it is gated on.
    """
    if sample is not None and len(sample.calibration) >= MIN_CALIBRATION_ROWS:
        return _logged(*_on_sample(sample))
    validation = read_validation_split(trained)
    if validation is not None and any(not is_blank(t) for t in validation[0]):
        nonblank = sum(not is_blank(t) for t in validation[0] if t is not None)
        used = f"{min(nonblank, CALIBRATION_ROWS)} of its {len(validation[0])} rows"
        calibrated_on = f"{VALIDATION_SPLIT} ({used}, disjoint from the gated texts)"
        if sample is None:
            return _logged(validation[0], calibrated_on, None)
        usable = len(sample.texts) + len(sample.calibration)
        sample = sample.gating_all(max_gated)
        gated = len(sample.texts)
        which = f"all {gated} are" if gated == usable else f"{gated} (--check-rows) are"
        log(
            f"check texts: only {usable} usable in {sample.source}, too few to spare "
            f"{MIN_CALIBRATION_ROWS} for calibration; int8 calibrates on {VALIDATION_SPLIT} "
            f"({used}) instead, and {which} gated ({sample.fingerprint})"
        )
        return validation[0], calibrated_on, sample
    if sample is None:
        return _logged(texts.texts, f"{texts.source} (also gated)", None)
    calibration, calibrated_on, sample = _logged(*_on_sample(sample))
    log(
        f"warning: int8 calibrates on only {len(calibration)} text(s) and {trained.path} has "
        f"no {VALIDATION_SPLIT} with text to calibrate on instead, so its scales may be poor and "
        f"fail the gate; pass --check-input/--check-table with at least "
        f"{2 * MIN_CALIBRATION_ROWS} usable texts (half of them calibrate), or export a "
        f"checkpoint that `marketpulse train` wrote (it saves {VALIDATION_SPLIT})"
    )
    return calibration, calibrated_on, sample


def _on_sample(sample: CheckSample) -> tuple[list[str], str, CheckSample]:
    """Calibrate on the sample's further rows (on its gated ones when it has none)."""
    log(
        f"check texts: {len(sample.texts)} rows of {sample.source} ({sample.fingerprint}), "
        f"{len(sample.calibration)} more to calibrate int8"
    )
    if sample.calibration:
        further = f"{len(sample.calibration)} further sampled rows of {sample.source}"
        return sample.calibration, f"{further} (disjoint from the check texts)", sample
    return sample.texts, f"{sample.source} (also gated)", sample


def _logged(calibration: list[str], calibrated_on: str, sample: CheckSample | None):
    """The choice as it is, logged: `int8 calibrates on ...`."""
    log(f"int8 calibrates on {calibrated_on}")
    return calibration, calibrated_on, sample


def run(cfg: ExportConfig) -> Bundle:
    """Export, check and publish a bundle; raise MarketpulseError when a check fails."""
    trained = load_checkpoint(Path(cfg.model).resolve())
    checkpoint = trained.path
    out = Path(cfg.out).resolve()
    max_length = cfg.max_length or trained.max_length
    check_out_dir(out)
    texts = load_check_texts(trained, cfg.test_rows)  # bad split: fail before work
    calibrates = "int8" in cfg.variants  # the one graph with calibrated (static) scales
    sample = None
    if cfg.check_source is not None:  # int8 calibrates on further rows: read them too
        sample = read_check_sample(cfg.check_source, CALIBRATION_ROWS if calibrates else 0)
    calibration_texts, calibrated_on = [], None
    if calibrates:
        calibration_texts, calibrated_on, sample = calibration_source(
            trained, texts, sample, cfg.check_source.rows if cfg.check_source else CHECK_ROWS
        )
    elif sample is not None:
        log(f"check texts: {len(sample.texts)} rows of {sample.source} ({sample.fingerprint})")
    warning = imprecise_gate_warning(len(sample.texts)) if sample is not None else None
    if warning:
        log(warning)

    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.gettempdir())
    sweep_dead_runs(out.parent, staging_prefix(out), log)  # those of killed runs
    sweep_dead_runs(temp, WORK_PREFIX, log)
    # owned folders, made under a name with ~ and renamed once their lock is held
    with owned_folder(out.parent, staging_prefix(out)) as owned:
        staging = owned / "bundle"  # beside owner.lock, which is not the bundle's
        staging.mkdir()
        write_tokenizer(checkpoint, staging / TOKENIZER, max_length)
        with (
            owned_folder(temp, WORK_PREFIX) as work,
            _temp_folder(work / "tmp"),  # the libraries' temp files too (ORT's ort.quant.*)
        ):
            calibration = Calibration(staging / TOKENIZER, max_length, calibration_texts)
            graphs = build_graphs(checkpoint, work, cfg, calibration)
            for variant, built in graphs.items():
                shutil.move(built.path, staging / registry.get(variant).file)
        manifest = base_manifest(cfg, trained, max_length, graphs)
        if calibrates:
            # 0 recorded too: rescoring turned off, not a bundle from before it
            manifest["variants"]["int8"]["rescore_margin"] = cfg.rescore_margin
            manifest["calibration_texts"] = calibrated_on
            manifest["calibration_rows"] = len(calibration.used())  # non-blank, capped
        publishable(staging)  # a bundle is read by other users
        return check_and_publish(cfg, checkpoint, texts, sample, staging, out, manifest)


@contextmanager
def _temp_folder(folder: Path) -> Iterator[None]:
    """`tempfile`'s folder is `folder` inside the block: what the libraries make there
    (the quantizer's copy of the model) goes with the owned folder it is in, even when
    the run is killed."""
    folder.mkdir()
    before = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = before


def staging_prefix(out: Path) -> str:
    """The name of the folders a bundle for --out `out` is built in, up to their suffix."""
    return f".{out.name}.export-"


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
