"""Score labeled tables with a trained model and report the training metrics.

The model is either a `marketpulse train` checkpoint (scored with PyTorch through
`predict.predict_logits`) or an exported bundle (a directory with manifest.json,
scored with the shared ONNX `Predictor`, so no torch is needed for that path).
Every table's labels are matched to the model's before the model loads
(`eval_labels.load_rows`: integer labels, --label-names, --label-map).

`evaluate` scores one table. `evaluate_domains` scores several named tables (domains)
with the model loaded once, and sets each beside the training domain: the checkpoint's
own test metrics (metrics.json `test`), or what a bundle's manifest kept of them
(`checks.pytorch`: macro-F1 on the test split, no accuracy). A model that records
neither is compared with the first domain, and the report says so. The domains are
built in `eval_domains.py` (`build_domains`) and the reports written as text in
`eval_report.py` (`format_report`, `format_domains_report`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from marketpulse.bundle import MANIFEST, read_manifest
from marketpulse.checkpoint import CONFIG, METRICS, Checkpoint, load_checkpoint
from marketpulse.errors import MarketpulseError
from marketpulse.metrics import classification_metrics
from marketpulse.train.data import DataSource, LabeledRows
from marketpulse.train.eval_domains import DOMAIN_FLAGS, Domain
from marketpulse.train.eval_labels import load_rows, position_note


def _open_model(model: str | Path, variant: str | None):
    """(directory, is_bundle, labels, checkpoint or None), checked before any data is read."""
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
        return model_dir, True, list(read_manifest(model_dir)["labels"]), None
    checkpoint = load_checkpoint(model_dir)
    return model_dir, False, list(checkpoint.labels), checkpoint


class _Scorer:
    """The model, loaded once, scoring any number of text lists into (n, labels) scores."""

    def __init__(self, model_dir, checkpoint: Checkpoint | None, *, variant, device, max_length):
        if checkpoint is None:
            from marketpulse.bundle import load_bundle
            from marketpulse.inference.predictor import Predictor

            bundle = load_bundle(model_dir)
            self._predictor = Predictor(bundle, variant=variant, device=device)
            self.labels = bundle.labels
            self.info = {
                "kind": "bundle",
                "model_version": bundle.version,
                "variant": self._predictor.variant,
                "provider": self._predictor.provider,
                "reason": self._predictor.describe(),
                "max_length": bundle.max_length,
            }
            return
        from marketpulse.train.predict import load_model, resolve_device

        self._device, _, reason = resolve_device(device, precision="fp32")
        self._model, self._tokenizer = load_model(checkpoint, self._device)
        self._max_length = max_length or checkpoint.max_length
        self.labels = list(checkpoint.labels)
        self.info = {
            "kind": "checkpoint",
            "device": self._device,
            "reason": f"PyTorch on {self._device}: {reason}",
            "max_length": self._max_length,
        }

    def __call__(self, texts: list[str], batch_size: int):
        if self.info["kind"] == "bundle":
            return self._predictor.predict_proba(list(texts))
        from marketpulse.train.predict import predict_logits

        return predict_logits(
            self._model,
            self._tokenizer,
            texts,
            max_length=self._max_length,
            batch_size=batch_size,
            device=self._device,
            progress=True,
        )


def _score(scorer: _Scorer, source: DataSource, rows: LabeledRows, batch_size: int) -> dict:
    started = time.perf_counter()
    scores = scorer(rows.texts, batch_size)
    elapsed = time.perf_counter() - started
    y_pred = [scorer.labels[i] for i in scores.argmax(axis=1)]
    return {
        "data": {"source": source.describe(), "fingerprint": rows.fingerprint()},
        "rows": {"read": rows.rows_read, "used": len(rows.texts), "skipped": rows.skipped},
        "predict_time_s": round(elapsed, 2),
        "rows_per_s": round(len(rows.texts) / max(elapsed, 1e-9), 1),
        "metrics": classification_metrics(rows.labels, y_pred, scorer.labels),
    }


def evaluate(
    model: str | Path,
    source: DataSource,
    *,
    label_map: dict[str, str] | None = None,
    variant: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    max_length: int | None = None,
) -> dict:
    """Return {"model", "data", "rows", "metrics", "integer_labels", ...} for `model` on
    `source`'s rows; `integer_labels` is how integer labels were named by position
    ({"named_by", "names": {"0": ...}}), or None."""
    model_dir, _, labels, checkpoint = _open_model(model, variant)
    rows, positions = load_rows(source, labels, label_map or {})
    if positions and positions["named_by"] != "--label-names":
        print(position_note(labels, None, None), file=sys.stderr)
    scorer = _Scorer(model_dir, checkpoint, variant=variant, device=device, max_length=max_length)
    scored = _score(scorer, source, rows, batch_size)
    return {"model": str(model_dir), **scorer.info, **scored, "integer_labels": positions}


def _reference(kind: str, name: str, source: str, figures: dict) -> dict:
    """What gaps are measured from; `figures` is a metrics dict (accuracy may be absent)."""
    return {
        "kind": kind,
        "name": name,
        "source": source,
        "rows": figures.get("n"),
        "accuracy": figures.get("accuracy"),
        "macro_f1": figures["macro_f1"],
        "majority_baseline": figures.get("majority_baseline"),
    }


def _training_reference(model_dir: Path, checkpoint: Checkpoint | None) -> dict | None:
    """The training domain's test figures as the model recorded them, or None."""
    if checkpoint is None:
        checks = read_manifest(model_dir).get("checks") or {}
        pytorch = checks.get("pytorch") or {}  # export records rows and macro-F1 only
        if "macro_f1" not in pytorch:
            return None
        texts = checks.get("texts", "its test split")
        source = f"{MANIFEST} checks: the checkpoint on {texts}"
        return _reference("training", "training", source, {**pytorch, "n": pytorch.get("rows")})
    test = (checkpoint.metrics or {}).get("test")
    if not test:
        return None
    return _reference("training", "training", f"{METRICS} test split", test)


def _gap(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def evaluate_domains(
    model: str | Path,
    domains: Sequence[Domain],
    *,
    variant: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    max_length: int | None = None,
) -> dict:
    """Score every domain with one loaded model; per-domain metrics, baselines and gaps.

    Every table is read before the model loads, so a bad source fails in seconds.
    Gaps are domain minus reference (negative: worse than on the training domain).
    """
    if not domains:
        raise MarketpulseError("no domains to evaluate; pass --input/--table/--query or --domain")
    model_dir, _, labels, checkpoint = _open_model(model, variant)
    loaded = []
    for domain in domains:
        # a --domain source has no --label-names: its integers are named by --label-map
        flagged = domain.name if domain.flags == DOMAIN_FLAGS else None
        try:
            rows, positions = load_rows(
                domain.source, labels, dict(domain.label_map), domain.flags, flagged
            )
        except MarketpulseError as exc:
            raise MarketpulseError(f"domain {domain.name!r}: {exc}") from exc
        loaded.append((domain, rows, positions))
    for domain, _, positions in loaded:  # every table read: say how before the model loads
        if positions and positions["named_by"] != "--label-names":
            flagged = domain.name if domain.flags == DOMAIN_FLAGS else None
            print(position_note(labels, domain.name, flagged), file=sys.stderr)
    scorer = _Scorer(model_dir, checkpoint, variant=variant, device=device, max_length=max_length)
    results = [
        {"name": d.name, **_score(scorer, d.source, rows, batch_size), "integer_labels": positions}
        for d, rows, positions in loaded
    ]
    reference = _training_reference(model_dir, checkpoint)
    if reference is None:
        source = "first domain: the model records no training test metrics"
        reference = _reference("first_domain", results[0]["name"], source, results[0]["metrics"])
    for result in results:
        m = result["metrics"]
        result["gap"] = {
            "accuracy": _gap(m["accuracy"], reference["accuracy"]),
            "macro_f1": _gap(m["macro_f1"], reference["macro_f1"]),
        }
    summary = [
        {
            "domain": r["name"],
            "rows": r["metrics"]["n"],
            "accuracy": r["metrics"]["accuracy"],
            "macro_f1": r["metrics"]["macro_f1"],
            "baseline_accuracy": r["metrics"]["majority_baseline"]["accuracy"],
            "baseline_macro_f1": r["metrics"]["majority_baseline"]["macro_f1"],
            "gap_accuracy": r["gap"]["accuracy"],
            "gap_macro_f1": r["gap"]["macro_f1"],
        }
        for r in results
    ]
    return {
        "model": str(model_dir),
        **scorer.info,
        "reference": reference,
        "domains": results,
        "summary": summary,
    }
