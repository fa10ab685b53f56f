"""A classifier checkpoint as --base-model: its head lines up with the new run's labels."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from marketpulse.checkpoint import load_checkpoint  # noqa: E402
from marketpulse.train.fit import match_base_head  # noqa: E402


def load(path, labels):
    """The base loaded as `fine_tune` loads it, for the new run's `labels`."""
    return AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    ).eval()


def probabilities(model, path, labels) -> dict[str, float]:
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(["Shares of Acme jumped after strong earnings"], return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)[0]
    return {label: float(probs[i]) for i, label in enumerate(labels)}


def test_the_same_labels_in_another_order_keep_their_meaning(tiny_checkpoint):
    base_labels = load_checkpoint(tiny_checkpoint).labels
    before = probabilities(load(tiny_checkpoint, base_labels), tiny_checkpoint, base_labels)
    reordered = list(reversed(base_labels))
    model = load(tiny_checkpoint, reordered)
    line = match_base_head(model, tiny_checkpoint, reordered)
    assert line and "reordered" in line
    after = probabilities(model, tiny_checkpoint, reordered)
    for label in base_labels:
        assert after[label] == pytest.approx(before[label], abs=1e-6)


def test_other_label_names_get_a_new_head(tiny_checkpoint):
    base_labels = load_checkpoint(tiny_checkpoint).labels
    other = [f"other_{i}" for i in range(len(base_labels))]
    model = load(tiny_checkpoint, other)
    old = model.classifier.weight.detach().clone()
    line = match_base_head(model, tiny_checkpoint, other)
    assert line and "replaced" in line
    assert not torch.equal(model.classifier.weight, old)


def test_the_same_labels_in_the_same_order_are_left_alone(tiny_checkpoint):
    labels = load_checkpoint(tiny_checkpoint).labels
    assert match_base_head(load(tiny_checkpoint, labels), tiny_checkpoint, labels) is None
