"""One fine-tuning: `FitData` in, `Fit` out (the best-epoch model, in memory).

`fine_tune` loads a fresh model from the base checkpoint, tokenizes the train and
validation rows (web addresses as one token, marketpulse/urls.py, unless --keep-urls)
and runs one transformers Trainer on them: dynamic padding, length-grouped training
batches, optional class-weighted loss, early stopping on validation macro-F1. It never
sees the test rows (`FitData` does not hold them) and writes nothing but Trainer's epoch
checkpoints in `work`, which it removes; a plain run (trainer.py) and every tuning trial
(tune.py) are one call each.

A classifier --base-model's head is put in this run's label order, or replaced when
its labels differ (`match_base_head`).

Evaluation never trusts Trainer's sampler order: `OrderedEvalTrainer` (built by
`_make_trainer_class`) forces a sequential sampler for validation. The Trainer set-up
this shares with `adapt.py` (TrainingArguments, the progress lines) lives in
`hf_trainer.py`. Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marketpulse.metrics import classification_metrics
from marketpulse.train.config import TrainConfig
from marketpulse.train.hf_trainer import (
    log,
    make_progress_callback,
    print_progress_only,
    quiet_transformers,
    training_arguments,
)
from marketpulse.urls import set_url_normalizer


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
