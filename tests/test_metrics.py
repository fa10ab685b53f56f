"""marketpulse.metrics agrees with scikit-learn and formats a readable table."""

from __future__ import annotations

import random

import pytest

from marketpulse.errors import MarketpulseError
from marketpulse.metrics import classification_metrics, format_metrics

LABELS = ["bearish", "bullish", "neutral"]


def test_hand_computed_example():
    y_true = ["bearish", "bearish", "bullish", "neutral", "neutral", "neutral"]
    y_pred = ["bearish", "neutral", "bullish", "neutral", "neutral", "bullish"]
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    assert m["per_class"]["bearish"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert m["per_class"]["bullish"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["neutral"]["recall"] == pytest.approx(2 / 3)
    assert m["majority_baseline"]["label"] == "neutral"
    assert m["majority_baseline"]["accuracy"] == pytest.approx(0.5)
    # Always "neutral": neutral P=0.5 R=1 F1=2/3, others 0.
    assert m["majority_baseline"]["macro_f1"] == pytest.approx((2 / 3) / 3)


def test_matches_scikit_learn_on_random_labels():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(7)
    # "bullish" never predicted and rarely true, to exercise zero divisions.
    y_true = rng.choices(LABELS, weights=[5, 1, 10], k=500)
    y_pred = rng.choices(["bearish", "neutral"], k=500)
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    for avg_key, fn in [
        ("macro_precision", metrics.precision_score),
        ("macro_recall", metrics.recall_score),
        ("macro_f1", metrics.f1_score),
    ]:
        ref = fn(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)
        assert m[avg_key] == pytest.approx(ref)
    assert m["confusion_matrix"] == metrics.confusion_matrix(y_true, y_pred, labels=LABELS).tolist()
    ref_f1 = metrics.f1_score(y_true, y_pred, labels=LABELS, average=None, zero_division=0)
    assert [m["per_class"][label]["f1"] for label in LABELS] == pytest.approx(list(ref_f1))


def test_unknown_label_is_a_one_line_error():
    with pytest.raises(MarketpulseError, match="label hold is not among the model's labels"):
        classification_metrics(["bearish", "hold"], ["bearish", "bearish"], LABELS)


def test_empty_input_is_an_error():
    with pytest.raises(MarketpulseError, match="no labeled rows"):
        classification_metrics([], [], LABELS)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="y_pred has 1"):
        classification_metrics(["bearish", "bullish"], ["bearish"], LABELS)


def test_format_metrics_lists_every_label_and_the_matrix():
    m = classification_metrics(
        ["bearish", "bullish", "neutral"], ["bearish", "neutral", "neutral"], LABELS
    )
    text = format_metrics(m)
    lines = text.splitlines()
    assert lines[0].split() == ["label", "precision", "recall", "f1", "support"]
    assert any(line.startswith("bullish") and line.split()[1:4] == ["0.0000"] * 3 for line in lines)
    assert "macro-F1 0.5556" in text
    assert "majority baseline" in text
    # Matrix row for "bullish": one true bullish predicted neutral.
    assert lines[-2].split() == ["bullish", "0", "0", "1"]
