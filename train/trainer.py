"""Fine-tune a BERT-family encoder as a text classifier, read top to bottom by `run`.

load rows -> keep each text once (`dedup.drop_duplicates`) -> stratified split (test
rows saved) -> fine-tune (`fit.fine_tune`) -> save checkpoint -> score the test rows in
order -> metrics.json.
What lands in the output directory, and where each field sits, is defined by
`marketpulse.checkpoint`; `run` writes through it and returns the `Checkpoint`.

Everything is written to a staging directory beside --out (`out_dir.staged_out`), which
replaces --out only once the checkpoint is complete: a failed or interrupted run
leaves an earlier training in --out as it was, never mixed with this run's files.

`run` is three calls that `tune.py` shares: `prepare` (read and split once),
`fit.fine_tune` (one Trainer run on the train and validation rows only, returning the
best-epoch model in memory; a tuning trial is one call), `save_and_score` (save the
model, score the test rows once, write metrics.json). `format_summary` is the text
`marketpulse train` prints from that metrics.json.

The final test metrics come from `predict.predict_logits`, which maps each logit row
back to its own text, never from Trainer's sampler order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from marketpulse.checkpoint import (
    TEST_SPLIT,
    VALIDATION_SPLIT,
    Checkpoint,
    load_checkpoint,
    write_metrics,
    write_test_split,
    write_validation_split,
)
from marketpulse.metrics import classification_metrics, format_metrics
from marketpulse.train.advice import count_phrase
from marketpulse.train.basemodel import resolve_base_model
from marketpulse.train.config import TrainConfig
from marketpulse.train.data import LabeledRows, load_labeled
from marketpulse.train.dedup import drop_duplicates
from marketpulse.train.fit import Fit, FitData, fine_tune
from marketpulse.train.hf_trainer import WORK_DIR, library_versions, log
from marketpulse.train.label_checks import require_trainable
from marketpulse.train.out_dir import check_train_out, staged_out
from marketpulse.train.predict import predict_logits, resolve_device
from marketpulse.train.split import Split, stratified_split
from marketpulse.urls import URL_LOG_LINE


@dataclass(frozen=True)
class Prepared:
    """The rows read and split once, shared by a plain run and by every tuning trial."""

    rows: LabeledRows
    split: Split
    fit: FitData
    test_texts: list[str]
    test_labels: list[str]
    device_reason: str


def prepare(cfg: TrainConfig) -> Prepared:
    """Resolve the base model and device, read the rows and split them (nothing written)."""
    check_train_out(Path(cfg.out))
    base_dir = resolve_base_model(cfg.base_model)
    device, precision, reason = resolve_device(cfg.device, cfg.precision)

    # each text once: a repeated text can never sit in both the train and the test split
    rows = drop_duplicates(load_labeled(cfg.source))
    if line := rows.duplicates.log_line():
        log(line)
    require_trainable(rows, cfg.source, min_per_class=3)
    split = stratified_split(rows.labels, cfg.split, cfg.seed)
    skipped = sum(rows.skipped.values())
    log(
        f"read {rows.rows_read} rows from {cfg.source.describe()}: {len(rows.texts)} used, "
        f"{skipped} skipped{f' ({count_phrase(rows.skipped)})' if skipped else ''}; "
        f"split {count_phrase(split.sizes())}"
    )
    log(f"device {device} ({precision}): {reason}")
    if cfg.normalize_urls:
        log(URL_LOG_LINE)

    def take(indices: list[int]) -> tuple[list[str], list[str]]:
        return [rows.texts[i] for i in indices], [rows.labels[i] for i in indices]

    train_texts, train_labels = take(split.train)
    val_texts, val_labels = take(split.validation)
    test_texts, test_labels = take(split.test)
    fit = FitData(
        labels=rows.label_names,
        train_texts=train_texts,
        train_labels=train_labels,
        val_texts=val_texts,
        val_labels=val_labels,
        base_dir=base_dir,
        device=device,
        precision=precision,
    )
    return Prepared(rows, split, fit, test_texts, test_labels, reason)


def save_and_score(
    cfg: TrainConfig,
    prepared: Prepared,
    fit: Fit,
    started: float,
    out: Path,
    extra: dict | None = None,
) -> Checkpoint:
    """Save `fit`'s model to `out` (the staging directory), score the test rows once,
    write metrics.json.

    `started` is the run's perf_counter start (for total_time_s); `extra` adds top-level
    metrics.json keys (tuning adds `tuning`).
    """
    rows, split, labels = prepared.rows, prepared.split, prepared.fit.labels
    model = fit.model
    model.save_pretrained(out, safe_serialization=True)
    fit.tokenizer.save_pretrained(out)

    logits = predict_logits(
        model,
        fit.tokenizer,
        prepared.test_texts,
        max_length=cfg.max_length,
        batch_size=cfg.eval_batch_size,
        device=str(model.device),
    )
    test = classification_metrics(
        prepared.test_labels, [labels[i] for i in logits.argmax(1)], labels
    )

    metrics = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "test": test,
        "validation": fit.validation(),
        "train_time_s": round(fit.train_time_s, 1),
        "train_rows_per_s": round(fit.train_rows_per_s, 1),
        "total_time_s": round(time.perf_counter() - started, 1),
        "rows": {
            "read": rows.rows_read,
            "used": len(rows.texts),
            "skipped": rows.skipped,
            "duplicate_texts": rows.duplicates.record() if rows.duplicates else None,
            "per_label": rows.counts,
            "split": split.sizes(),
        },
        "data": {
            "source": cfg.source.describe(),
            "text_col": cfg.source.text_col,
            "label_col": cfg.source.label_col,
            "label_names": list(cfg.source.label_names) if cfg.source.label_names else None,
            "fingerprint": rows.fingerprint(),
            "test_split": TEST_SPLIT,
            "validation_split": VALIDATION_SPLIT,
        },
        "hyperparameters": cfg.hyperparameters(),
        "device": {
            "device": prepared.fit.device,
            "precision": prepared.fit.precision,
            "reason": prepared.device_reason,
        },
        "versions": library_versions(),
        **(extra or {}),
    }
    return write_metrics(
        out,
        metrics,
        labels=labels,
        max_length=cfg.max_length,
        base_model=str(prepared.fit.base_dir),
    )


def write_test_rows(out: Path, prepared: Prepared) -> None:
    """Record the test and validation rows in `out` (the staging directory, before training)."""
    write_test_split(out, prepared.test_texts, prepared.test_labels)
    write_validation_split(out, prepared.fit.val_texts, prepared.fit.val_labels)


def run(cfg: TrainConfig) -> Checkpoint:
    """Fine-tune, save the checkpoint and metrics.json in `cfg.out`, return the checkpoint."""
    t0 = time.perf_counter()
    prepared = prepare(cfg)
    with staged_out(Path(cfg.out)) as stage:
        write_test_rows(stage, prepared)
        fit = fine_tune(cfg, prepared.fit, stage / WORK_DIR)
        save_and_score(cfg, prepared, fit, t0, stage)
    return load_checkpoint(cfg.out)


def format_summary(metrics: dict) -> str:
    rows = metrics["rows"]
    split = rows["split"]
    validation = metrics["validation"]
    device = metrics["device"]
    header = [
        f"test set: {split['test']} rows (train {split['train']}, validation {split['validation']}); "
        f"best validation macro-F1 {validation['best_macro_f1']:.4f}",
        f"rows used {rows['used']}, skipped {sum(rows['skipped'].values())}; "
        f"train time {metrics['train_time_s']:.0f}s on {device['device']} {device['precision']}"
        + (f" ({metrics['train_rows_per_s']:.1f} rows/s)" if "train_rows_per_s" in metrics else ""),
    ]
    curve = validation.get("curve") or []
    if curve:
        stop = "stopped early" if validation.get("stopped_early") else "ran every epoch"
        header.append(f"validation by epoch ({stop}; kept epoch {validation['best_epoch']:g}):")
        header += [
            f"  epoch {e['epoch']:>5g}  macro-F1 {e['macro_f1']:.4f}  accuracy {e['accuracy']:.4f}"
            f"  loss {e['loss']:.4f}"
            for e in curve
        ]
    if "tuning" in metrics:
        from marketpulse.train.tune import format_tuning

        header += format_tuning(metrics["tuning"])
    return "\n".join([*header, ""]) + format_metrics(metrics["test"])
