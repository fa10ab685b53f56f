"""Fine-tune a BERT-family encoder as a text classifier, read top to bottom by `run`.

load rows -> keep each text once (`dedup.drop_duplicates`) -> stratified split (test
rows saved) -> tokenize (web addresses as one token, marketpulse/urls.py, unless
--keep-urls) -> transformers Trainer (dynamic padding, length-grouped training
batches, early stopping on validation macro-F1) -> save checkpoint -> score the test
rows in order -> metrics.json.
What lands in the output directory, and where each field sits, is defined by
`marketpulse.checkpoint`; `run` writes through it and returns the `Checkpoint`.

Everything is written to a staging directory beside --out (`staged_out`), which
replaces --out only once the checkpoint is complete: a failed or interrupted run
leaves an earlier training in --out as it was, never mixed with this run's files.

`run` is three calls that `tune.py` shares: `prepare` (read and split once),
`fine_tune` (one Trainer run on the train and validation rows only, returning the
best-epoch model in memory; a tuning trial is one call), `save_and_score` (save the
model, score the test rows once, write metrics.json).

The Trainer set-up this shares with `adapt.py` (TrainingArguments, the progress lines,
library versions) lives in `hf_trainer.py`.

Evaluation never trusts Trainer's sampler order: `OrderedEvalTrainer` (built by
`_make_trainer_class`) forces a sequential sampler for validation, and the final
test metrics come from `predict.predict_logits`, which maps each logit row back to
its own text.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from marketpulse.checkpoint import (
    METRICS,
    TEST_SPLIT,
    VALIDATION_SPLIT,
    Checkpoint,
    holds_training,
    load_checkpoint,
    out_in_use,
    write_metrics,
    write_test_split,
    write_validation_split,
)
from marketpulse.errors import MarketpulseError
from marketpulse.metrics import classification_metrics, format_metrics
from marketpulse.staging import publishable, replace_dir
from marketpulse.train.advice import count_phrase
from marketpulse.train.basemodel import resolve_base_model
from marketpulse.train.config import TrainConfig
from marketpulse.train.data import LabeledRows, load_labeled
from marketpulse.train.dedup import drop_duplicates
from marketpulse.train.hf_trainer import (
    WORK_DIR,
    library_versions,
    log,
    make_progress_callback,
    print_progress_only,
    quiet_transformers,
    training_arguments,
)
from marketpulse.train.label_checks import require_trainable
from marketpulse.train.predict import predict_logits, resolve_device
from marketpulse.train.split import Split, stratified_split
from marketpulse.urls import URL_LOG_LINE, set_url_normalizer


class _Encoded:
    """A list-backed torch Dataset of {"input_ids", "attention_mask", "labels"} dicts."""

    def __init__(self, encodings: dict, labels: list[int]):
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {key: values[i] for key, values in self.encodings.items()}
        item["labels"] = self.labels[i]
        return item


def _make_trainer_class():
    """Build the Trainer subclass lazily so importing this module stays cheap."""
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class OrderedEvalTrainer(Trainer):
        """Trainer whose evaluate/predict keep dataset order; optional class-weighted loss."""

        def __init__(self, *args, class_weights=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.class_weights = class_weights

        def _get_eval_sampler(self, eval_dataset):
            # Stock Trainer uses a shuffled LengthGroupedSampler here when group_by_length
            # is on, so eval predictions stop lining up with eval labels.
            return SequentialSampler(eval_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.class_weights is None:
                return super().compute_loss(
                    model,
                    inputs,
                    return_outputs=return_outputs,
                    num_items_in_batch=num_items_in_batch,
                )
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            weight = self.class_weights.to(outputs.logits.device, outputs.logits.dtype)
            loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weight)
            return (loss, outputs) if return_outputs else loss

    return OrderedEvalTrainer


@dataclass(frozen=True)
class FitData:
    """What one fine-tuning may see: the train and validation rows, never the test rows.

    `prepare` keeps the test rows apart, so a tuning trial cannot score on them.
    """

    labels: list[str]
    train_texts: list[str]
    train_labels: list[str]
    val_texts: list[str]
    val_labels: list[str]
    base_dir: Path
    device: str
    precision: str


@dataclass(frozen=True)
class Prepared:
    """The rows read and split once, shared by a plain run and by every tuning trial."""

    rows: LabeledRows
    split: Split
    fit: FitData
    test_texts: list[str]
    test_labels: list[str]
    device_reason: str


@dataclass
class Fit:
    """One fine-tuning's outcome: the best-epoch model (in memory) and its validation record."""

    model: Any
    tokenizer: Any
    best_macro_f1: float | None
    best_epoch: float | None
    epochs_run: float
    stopped_early: bool
    curve: list[dict]
    train_time_s: float
    train_rows_per_s: float

    def validation(self) -> dict:
        """metrics.json's `validation` block."""
        return {
            "best_macro_f1": self.best_macro_f1,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "curve": self.curve,
        }


def check_train_out(out: Path) -> None:
    """Refuse an --out that holds anything but an earlier training's output (which this
    one replaces once it has succeeded, as export replaces a bundle), before any row is read."""
    if out_in_use(out) and not holds_training(out):
        raise MarketpulseError(
            f"--out {out} is not empty and holds no earlier `marketpulse train` output "
            f"(no {METRICS} with a checkpoint format); pass a new or empty directory"
        )


@contextmanager
def staged_out(out: Path) -> Iterator[Path]:
    """Yield a new directory beside `out` to build the checkpoint in; it replaces `out`
    when the block succeeds. On any failure (Ctrl-C too) it is deleted and `out` keeps
    what it held."""
    target = out.resolve()  # a symlinked --out: stage and swap beside the real directory
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.train-", dir=target.parent))
    try:
        yield stage
        publishable(stage)  # not mkdtemp's 0700 nor safetensors' 0600: readable by others
        _publish(stage, target, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, target: Path, out: Path) -> None:
    """Put `stage` at `target`; an earlier training there is swapped out, then deleted."""
    check_train_out(target)  # nothing else landed there while this run trained
    earlier = out_in_use(target)
    replace_dir(stage, target)
    if earlier:
        log(f"--out {out} holds an earlier training: this one replaces it")
    log(f"wrote checkpoint, {METRICS}, {TEST_SPLIT} and {VALIDATION_SPLIT} to {out}")


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


def fine_tune(cfg: TrainConfig, data: FitData, work: Path, callbacks: tuple = ()) -> Fit:
    """Fine-tune a fresh model from `data.base_dir` with `cfg`'s hyperparameters.

    Early stopping on validation macro-F1; the returned model is the best epoch's.
    `callbacks` are extra TrainerCallbacks (tuning adds its pruner). Trainer's epoch
    checkpoints go to `work`, which is removed before returning.
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        set_seed,
    )

    labels = data.labels
    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(data.base_dir)
    set_url_normalizer(tokenizer, cfg.normalize_urls)
    label2id = {label: i for i, label in enumerate(labels)}
    with quiet_transformers():  # "newly initialized classifier" is expected
        model = AutoModelForSequenceClassification.from_pretrained(
            data.base_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id=label2id,
            # A classifier checkpoint with another label count as base: new head.
            ignore_mismatched_sizes=True,
        )

    if line := match_base_head(model, data.base_dir, labels):
        log(line)

    def encode(texts: list[str], names: list[str]) -> _Encoded:
        enc = tokenizer(texts, truncation=True, max_length=cfg.max_length)
        return _Encoded(dict(enc), [label2id[name] for name in names])

    train_ds = encode(data.train_texts, data.train_labels)
    val_ds = encode(data.val_texts, data.val_labels)

    def compute_metrics(pred) -> dict:
        y_pred = [labels[i] for i in np.argmax(pred.predictions, axis=-1)]
        y_true = [labels[i] for i in pred.label_ids]
        m = classification_metrics(y_true, y_pred, labels)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    weights = None
    if cfg.class_weights:
        counts = np.bincount([label2id[name] for name in data.train_labels], minlength=len(labels))
        weights = torch.tensor(len(train_ds) / (len(labels) * counts), dtype=torch.float32)

    args = training_arguments(
        cfg,
        work,
        data.device,
        data.precision,
        len(train_ds),
        per_device_eval_batch_size=cfg.eval_batch_size,
        group_by_length=cfg.group_by_length,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        save_safetensors=True,
    )
    progress = make_progress_callback()
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[
            EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience),
            progress,
            *callbacks,
        ],
        class_weights=weights,
    )
    print_progress_only(trainer)

    t_train = time.perf_counter()
    try:
        trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    train_time = time.perf_counter() - t_train
    epochs_run = trainer.state.epoch
    best_epoch = progress.best[1] if progress.best else None
    return Fit(
        model=trainer.model.eval(),
        tokenizer=tokenizer,
        best_macro_f1=trainer.state.best_metric,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        stopped_early=epochs_run < cfg.epochs,
        curve=progress.curve,
        train_time_s=train_time,
        train_rows_per_s=len(train_ds) * epochs_run / max(train_time, 1e-9),
    )


def match_base_head(model, base_dir: Path, labels: list[str]) -> str | None:
    """Line up a classifier base's head with `labels`; return what was done, if anything.

    `from_pretrained` starts a new head only when the label count differs. A base trained
    on the same labels in another order (a file whose string labels appear in another
    order) would keep its rows where they were and classify every text as another label:
    its rows are put in `labels`' order. A base with other label names gets a new head.
    """
    import torch
    from transformers import AutoConfig

    named = AutoConfig.from_pretrained(base_dir).id2label or {}
    base = [str(named[i]) for i in sorted(named)]
    placeholders = all(name == f"LABEL_{i}" for i, name in enumerate(base))
    if base == list(labels) or len(base) != len(labels) or placeholders:
        return None
    head = getattr(model, "classifier", None)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] if head else []
    if not linears or linears[-1].out_features != len(labels):
        return None
    out = linears[-1]
    if sorted(base) == sorted(labels):
        order = torch.tensor([base.index(label) for label in labels])
        with torch.no_grad():
            out.weight.copy_(out.weight[order])
            if out.bias is not None:
                out.bias.copy_(out.bias[order])
        return f"base model's classifier head reordered from {base} to {list(labels)}"
    model._init_weights(out)
    return f"base model's classifier head ({base}) replaced by a new one for {list(labels)}"


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
