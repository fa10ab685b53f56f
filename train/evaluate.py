"""Score a labeled table with a trained model and report the training metrics.

The model is either a `marketpulse train` checkpoint (scored with PyTorch through
`predict.predict_logits`) or an exported bundle (a directory with manifest.json,
scored with the shared ONNX `Predictor`, so no torch is needed for that path).
Integer labels in the table are named by the model's own label order unless
`--label-names` says otherwise.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from marketpulse.bundle import MANIFEST, read_manifest
from marketpulse.checkpoint import CONFIG, Checkpoint, load_checkpoint
from marketpulse.errors import MarketpulseError
from marketpulse.metrics import classification_metrics, format_metrics
from marketpulse.train.data import DataSource, load_labeled


def _predict_checkpoint(checkpoint: Checkpoint, texts, max_length, batch_size, device):
    from marketpulse.train.predict import load_model, predict_logits, resolve_device

    device, _, reason = resolve_device(device, precision="fp32")
    model, tokenizer = load_model(checkpoint, device)
    max_length = max_length or checkpoint.max_length
    logits = predict_logits(
        model,
        tokenizer,
        texts,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        progress=True,
    )
    info = {
        "kind": "checkpoint",
        "device": device,
        "reason": f"PyTorch on {device}: {reason}",
        "max_length": max_length,
    }
    return list(checkpoint.labels), logits, info


def _predict_bundle(bundle_dir: Path, texts, variant, device):
    from marketpulse.bundle import load_bundle
    from marketpulse.inference.predictor import Predictor

    bundle = load_bundle(bundle_dir)
    predictor = Predictor(bundle, variant=variant, device=device)
    probs = predictor.predict_proba(list(texts))
    info = {
        "kind": "bundle",
        "model_version": bundle.version,
        "variant": predictor.variant,
        "provider": predictor.provider,
        "reason": predictor.describe(),
        "max_length": bundle.max_length,
    }
    return bundle.labels, probs, info


def evaluate(
    model: str | Path,
    source: DataSource,
    *,
    variant: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    max_length: int | None = None,
) -> dict:
    """Return {"model", "data", "rows", "metrics", ...} for `model` on `source`'s rows."""
    model_dir = Path(model)
    if not model_dir.is_dir():
        raise MarketpulseError(
            f"model directory {model_dir} not found; pass --model with an existing directory"
        )
    is_bundle = (model_dir / MANIFEST).is_file()
    if not is_bundle and not (model_dir / CONFIG).is_file():
        raise MarketpulseError(
            f"{model_dir} is neither a checkpoint ({CONFIG}) nor a bundle ({MANIFEST}); "
            "pass --model with a `marketpulse train` or `marketpulse export` output directory"
        )
    if variant and not is_bundle:
        raise MarketpulseError(
            f"--variant applies to exported bundles but {model_dir} is a checkpoint; "
            "drop --variant or pass --model with a bundle directory"
        )
    if is_bundle:
        labels = list(read_manifest(model_dir)["labels"])
    else:
        checkpoint = load_checkpoint(model_dir)
        labels = list(checkpoint.labels)
    if source.label_names is None:
        source = dataclasses.replace(source, label_names=tuple(labels))
    rows = load_labeled(source)
    if not rows.texts:
        raise MarketpulseError(
            f"no usable rows in {source.describe()} (skipped {rows.skipped}); "
            "pass a table with non-empty text and labels"
        )
    started = time.perf_counter()
    if is_bundle:
        model_labels, scores, info = _predict_bundle(model_dir, rows.texts, variant, device)
    else:
        model_labels, scores, info = _predict_checkpoint(
            checkpoint, rows.texts, max_length, batch_size, device
        )
    elapsed = time.perf_counter() - started
    y_pred = [model_labels[i] for i in scores.argmax(axis=1)]
    return {
        "model": str(model_dir),
        **info,
        "data": {"source": source.describe(), "fingerprint": rows.fingerprint()},
        "rows": {"read": rows.rows_read, "used": len(rows.texts), "skipped": rows.skipped},
        "predict_time_s": round(elapsed, 2),
        "rows_per_s": round(len(rows.texts) / max(elapsed, 1e-9), 1),
        "metrics": classification_metrics(rows.labels, y_pred, model_labels),
    }


def format_report(result: dict) -> str:
    rows = result["rows"]
    head = (
        f"{rows['used']} rows from {result['data']['source']} "
        f"({sum(rows['skipped'].values())} skipped: {rows['skipped']})\n"
        f"model {result['model']}: {result['reason']}, {result['rows_per_s']} rows/s\n\n"
    )
    return head + format_metrics(result["metrics"])
