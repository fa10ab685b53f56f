"""Predictions must line up with their rows, even with length-grouped training batches.

transformers 4.57's Trainer, given `group_by_length=True`, also predicts through a
shuffled length-grouped sampler: `trainer.predict(ds).predictions[i]` is then not the
prediction for `ds[i]`, so comparing it with the labels in dataset order scores
chance. `LengthModel` predicts each row's own token count, so any reordering shows up
as wrong answers.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from transformers import (  # noqa: E402
    AutoTokenizer,
    DataCollatorWithPadding,
    PretrainedConfig,
    Trainer,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402

from marketpulse.train.basemodel import default_base_model_dir  # noqa: E402
from marketpulse.train.fit import _Encoded, _make_trainer_class  # noqa: E402
from marketpulse.train.predict import predict_logits  # noqa: E402

N_CLASSES = 64


class LengthModel(torch.nn.Module):
    """Logits peak at the number of real tokens in the row (capped at N_CLASSES - 1)."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(num_labels=N_CLASSES)
        self.bias = torch.nn.Parameter(torch.zeros(1))  # Trainer wants a parameter

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        lengths = attention_mask.sum(dim=1).clamp(max=N_CLASSES - 1)
        logits = torch.nn.functional.one_hot(lengths, N_CLASSES).float() * 10 + self.bias
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_base_model_dir())


@pytest.fixture(scope="module")
def texts():
    rng = np.random.default_rng(0)
    words = ["stock", "rally", "$AAPL", "falls", "guidance", "beats", "misses", "fed"]
    # 300 rows of 1..40 words in random order: plenty of distinct lengths to misplace.
    return [" ".join(rng.choice(words, size=rng.integers(1, 41))) for _ in range(300)]


def _dataset(tokenizer, texts):
    enc = tokenizer(texts, truncation=True, max_length=N_CLASSES - 1)
    labels = [len(ids) for ids in enc["input_ids"]]
    return _Encoded(dict(enc), labels), labels


def _predict_accuracy(trainer_cls, tokenizer, texts, tmp_path) -> float:
    dataset, labels = _dataset(tokenizer, texts)
    assert len(set(labels)) > 20  # a shuffle cannot keep every label in place by luck
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=16,
        group_by_length=True,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = trainer_cls(
        model=LengthModel(),
        args=args,
        eval_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    predictions = trainer.predict(dataset).predictions.argmax(-1)
    return float((predictions == np.array(labels)).mean())


def test_validation_during_training_keeps_row_order(tokenizer, texts, tmp_path):
    assert _predict_accuracy(_make_trainer_class(), tokenizer, texts, tmp_path) == 1.0


def test_stock_trainer_misaligns_so_the_check_above_can_fail(tokenizer, texts, tmp_path):
    # Documents the transformers behaviour the override exists for. If a future
    # transformers evaluates in order, this fails: then the override may go.
    assert _predict_accuracy(Trainer, tokenizer, texts, tmp_path) < 0.5


def test_predict_logits_returns_rows_in_input_order(tokenizer, texts):
    logits = predict_logits(LengthModel(), tokenizer, texts, max_length=N_CLASSES - 1, batch_size=7)
    _, labels = _dataset(tokenizer, texts)
    assert logits.shape == (len(texts), N_CLASSES)
    assert logits.argmax(axis=1).tolist() == labels
