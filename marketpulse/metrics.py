"""Classification metrics shared by train, evaluate and export (numpy only).

Everything works on label *names* in a fixed `labels` order, so a checkpoint, an
ONNX bundle and a test split all report the same confusion-matrix layout:
rows are the true label, columns the predicted label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from marketpulse import display
from marketpulse.errors import MarketpulseError


def _prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 from a confusion matrix; 0 where undefined."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(y) for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise MarketpulseError(
            f"{labels_are(unknown)} not among the model's labels "
            f"({', '.join(labels)}); map them to the model's label names first"
        )
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(cm, ([index[y] for y in y_true], [index[y] for y in y_pred]), 1)
    return cm


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> dict:
    """Accuracy, macro and per-class P/R/F1, confusion matrix and majority baseline.

    Macro averages run over every label in `labels`, including labels absent from
    `y_true` (they score 0), matching scikit-learn's `average="macro"` with `labels=`.
    """
    labels = list(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if not y_true:
        raise MarketpulseError("no labeled rows to evaluate; check the input table and filters")
    cm = confusion_matrix(y_true, y_pred, labels)
    precision, recall, f1 = _prf(cm)
    support = cm.sum(axis=1)

    # The majority baseline always predicts the most frequent true label.
    majority = int(np.argmax(support))
    base_cm = np.zeros_like(cm)
    base_cm[:, majority] = support
    _, _, base_f1 = _prf(base_cm)

    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": labels,
        "confusion_matrix": cm.tolist(),
        "majority_baseline": {
            "label": labels[majority],
            "accuracy": float(support[majority] / n),
            "macro_f1": float(base_f1.mean()),
        },
    }


def format_metrics(metrics: dict) -> str:
    """Render `classification_metrics` output as a plain-text table."""
    labels = metrics["labels"] if "labels" in metrics else list(metrics["per_class"])
    # padded by display width (marketpulse.display): a CJK label takes 2 columns a character
    width = max(12, *(display.width(label) for label in labels))
    pad = display.ljust
    lines = [
        f"{pad('label', width)} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}",
    ]
    for label in labels:
        c = metrics["per_class"][label]
        lines.append(
            f"{pad(label, width)} {c['precision']:>9.4f} {c['recall']:>9.4f} "
            f"{c['f1']:>9.4f} {c['support']:>9d}"
        )
    total = sum(metrics["per_class"][label]["support"] for label in labels)
    lines.append(
        f"{pad('macro avg', width)} {metrics['macro_precision']:>9.4f} "
        f"{metrics['macro_recall']:>9.4f} {metrics['macro_f1']:>9.4f} {total:>9d}"
    )
    lines.append("")
    lines.append(f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}")
    base = metrics.get("majority_baseline")
    if base:
        name = f" ({base['label']})" if "label" in base else ""
        lines.append(
            f"majority baseline{name}: accuracy {base['accuracy']:.4f}   "
            f"macro-F1 {base['macro_f1']:.4f}"
        )
    lines.append("")
    lines.append("confusion matrix (rows = true, columns = predicted)")
    cell = max(7, *(display.width(label) for label in labels))
    lines.append(" " * width + " " + " ".join(display.rjust(label, cell) for label in labels))
    for label, row in zip(labels, metrics["confusion_matrix"], strict=True):
        lines.append(f"{pad(label, width)} " + " ".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)


def labels_are(unknown: list[str], where: str = "") -> str:
    """ "label x<where> is" or "labels x, y<where> are", for an error naming unknown labels."""
    if len(unknown) == 1:
        return f"label {unknown[0]}{where} is"
    return f"labels {', '.join(unknown)}{where} are"
