"""Check a staged bundle against PyTorch and, when it passes, move it into place.

The gate:
- fp32 parity: max |logit_onnx - logit_torch| <= parity_tolerance, always fatal
  (a wrong export is never "an acceptable drop").
- every other variant that can run here: top-1 agreement with PyTorch >= min_agreement
  and macro-F1 no more than max_f1_drop below PyTorch's, unless allow_accuracy_drop.
- a variant made for CUDA (fp16) is gated only where the CUDA provider exists; without
  it the check is recorded as skipped, with its agreement on the CPU provider beside it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from marketpulse import drift
from marketpulse import variants as registry
from marketpulse.bundle import DRIFT_REFERENCE, Bundle, load_bundle, write_manifest
from marketpulse.errors import MarketpulseError
from marketpulse.export.checks import CheckTexts
from marketpulse.export.log import log


def on_cpu(variant: str) -> str:
    """The check's name for a CUDA variant run on the CPU provider (no CUDA here)."""
    return f"{variant} on CPU"


def check_and_publish(
    cfg, checkpoint: Path, texts: CheckTexts, staging: Path, out: Path, manifest: dict
) -> Bundle:
    """Run every check on the staged bundle; publish it at `out` or raise saying why not."""
    from marketpulse.export.checks import TorchReference, compare, run_all
    from marketpulse.inference.batching import TextEncoder, softmax
    from marketpulse.inference.predictor import Predictor, cuda_provider_available
    from marketpulse.metrics import classification_metrics

    manifest = dict(manifest, valid=False, invalid_reason="export checks have not run yet")
    write_manifest(staging, manifest)
    staged = load_bundle(staging, allow_invalid=True)

    labels = staged.labels
    cuda = cuda_provider_available()
    devices = {v: registry.check_device(v) for v in staged.variants}
    predictors = {
        v: Predictor(staged, variant=v, device=device)
        for v, device in devices.items()
        if device != "cuda" or cuda
    }
    on_cpu_errors: dict[str, str] = {}
    for v in staged.variants:
        if v in predictors:
            continue
        # Not the provider a CUDA graph is made for, but the CPU runs the same graph and
        # shows the conversion kept the model's decisions; recorded, not gated.
        try:
            predictors[on_cpu(v)] = Predictor(staged, variant=v, device="cpu")
        except MarketpulseError as exc:
            on_cpu_errors[v] = str(exc)
    log(f"checking {', '.join(predictors)} against PyTorch on {texts.source}")
    onnx_logits, torch_logits = run_all(predictors, TorchReference(checkpoint), texts.texts)
    staged_ids = TextEncoder(staged.tokenizer_path, staged.max_length).encode(texts.texts).ids
    del predictors  # release the sessions before the files move

    checks: dict[str, Any] = {"texts": texts.source, "variants": {}}
    if texts.labels is not None:
        predicted = [labels[i] for i in torch_logits.argmax(axis=1)]
        scores = classification_metrics(texts.labels, predicted, labels)
        checks["pytorch"] = {"rows": len(predicted), "macro_f1": scores["macro_f1"]}
    failures: list[str] = []
    drops: list[str] = []
    for variant in staged.variants:
        if variant not in onnx_logits:
            result = {"skipped": "no CUDA provider"}
            if on_cpu(variant) in onnx_logits:
                result["cpu_provider"] = compare(
                    onnx_logits[on_cpu(variant)], torch_logits, labels, texts.labels
                )
            elif variant in on_cpu_errors:
                result["cpu_provider"] = {"error": on_cpu_errors[variant]}
            checks["variants"][variant] = result
            continue
        result = compare(onnx_logits[variant], torch_logits, labels, texts.labels)
        checks["variants"][variant] = result
        if variant == registry.REFERENCE:
            result["parity_tolerance"] = cfg.parity_tolerance
            if result["max_abs_logit_diff"] > cfg.parity_tolerance:
                failures.append(
                    f"fp32 logits differ from PyTorch by {result['max_abs_logit_diff']:.2e} "
                    f"(> {cfg.parity_tolerance:.0e})"
                )
            continue
        if result["agreement"] < cfg.min_agreement:
            drops.append(
                f"{variant} agrees with PyTorch on {result['agreement']:.2%} of rows "
                f"(< {cfg.min_agreement:.2%})"
            )
        if "macro_f1" in result:
            result["f1_drop"] = checks["pytorch"]["macro_f1"] - result["macro_f1"]
            if result["f1_drop"] > cfg.max_f1_drop:
                drops.append(
                    f"{variant} macro-F1 is {result['f1_drop']:.4f} below PyTorch's "
                    f"(> {cfg.max_f1_drop})"
                )
    checks["gate"] = {
        "min_agreement": cfg.min_agreement,
        "max_f1_drop": cfg.max_f1_drop,
        "allow_accuracy_drop": cfg.allow_accuracy_drop,
        "accuracy_drops": drops,
    }
    if failures:
        raise MarketpulseError(
            f"export rejected, {out} left unchanged: {'; '.join(failures)}; the ONNX export "
            "is wrong: re-export with --optimization none, and report it if that fails too"
        )
    if drops and not cfg.allow_accuracy_drop:
        raise MarketpulseError(
            f"export rejected, {out} left unchanged: {'; '.join(drops)}; pass "
            "--allow-accuracy-drop to accept it, or loosen --min-agreement / --max-f1-drop"
        )
    manifest.update(checks=checks, valid=True)
    manifest[DRIFT_REFERENCE] = drift.reference(
        softmax(onnx_logits[registry.REFERENCE]),
        staged_ids,
        staged.tokenizer_path,
        labels,
        f"{texts.source}, {registry.REFERENCE} graph",
    )
    manifest.pop("invalid_reason")
    write_manifest(staging, manifest)
    _replace_dir(staging, out)
    bundle = load_bundle(out)
    log(f"wrote bundle {out} (model version {bundle.version})")
    return bundle


def _replace_dir(staging: Path, out: Path) -> None:
    """Put `staging` at `out`; an existing bundle there is swapped out, then deleted."""
    if not out.exists():
        staging.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
