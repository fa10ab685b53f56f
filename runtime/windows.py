"""A window of source rows -> the scores rows for it, in three stages both engines run.

    tokenize_window(ids, texts, predictor)  NULL/blank texts set aside with their
                                            reason, the rest tokenized
    infer_window(window, predictor, ...)    token-budget batches through ONNX Runtime
    results_table(window, predictor, ...)   the rows for the scores table + counters

The local engine runs them on its reader, main and writer threads; the Ray engine runs
all three inside one actor call. Either way a row gets the same label and
probabilities. A window knows nothing about DuckDB, the run record or threads.

A row whose batch fails in ONNX Runtime is retried alone (`Predictor.run_batches`); if
it still fails it is marked in `Window.failed`, counted as failed and left out of the
scores rows, so the next run tries it again. A window where every row failed is an
error: the bundle or the device is broken, not one row.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from marketpulse.errors import MarketpulseError
from marketpulse.inference.predictor import Predictor
from marketpulse.runtime import results


@dataclass
class Window:
    ids: object  # pyarrow Array, the source id type
    texts: list
    reasons: list  # None for rows to score, else 'null_text' / 'empty_text'
    valid: np.ndarray  # int indices of rows to score
    encoded: object = None  # batching.Encoded for the valid rows
    probs: np.ndarray | None = None  # (len(valid), n_labels)
    failed: np.ndarray | None = None  # bool (len(valid),)

    def skipped_reasons(self) -> dict[str, int]:
        """Rows set aside without inference, per reason."""
        return dict(Counter(r for r in self.reasons if r is not None))


def set_tokenizer_threads(device: str) -> None:
    """Tokenize serially on CPU, in parallel on CUDA; call before the first encode.

    On CPU the tokenizer runs on the reader thread beside one ONNX Runtime batch per
    core: a Rayon pool per core would only oversubscribe the CPU. On CUDA the cores are
    otherwise idle and a single tokenizing thread can fall behind the GPU.
    """
    if device == "cpu":
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        os.environ["RAYON_NUM_THREADS"] = "1"
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def tokenize_window(ids, texts, predictor: Predictor) -> Window:
    """A window of source rows (Arrow id and text arrays): NULL/empty text set aside
    with its reason, the rest tokenized."""
    texts = texts.to_pylist()
    reasons = [
        "null_text" if t is None else ("empty_text" if not t.strip() else None) for t in texts
    ]
    valid = np.fromiter((i for i, r in enumerate(reasons) if r is None), np.int64)
    window = Window(ids, texts, reasons, valid)
    window.encoded = predictor.encoder.encode([texts[i] for i in valid])
    return window


def infer_window(window: Window, predictor: Predictor, batch_tokens: int | None) -> None:
    """Fill `window.probs` and `window.failed`; raise when no row could be scored."""
    window.probs, window.failed, error = predictor.run_batches(window.encoded, batch_tokens)
    if len(window.valid) and window.failed.all():
        raise MarketpulseError(
            f"ONNX Runtime failed on every row of a window ({error}); check the bundle with "
            "`marketpulse inspect`, or rerun with --device cpu"
        ) from error


def results_table(window: Window, predictor: Predictor, version: str, p_cols: list[str]):
    """The window's rows for the scores table (failed rows left out) and its counters."""
    import pyarrow as pa

    n = len(window.texts)
    keep = np.ones(n, dtype=bool)
    keep[window.valid[window.failed]] = False
    scored = np.zeros(n, dtype=bool)
    scored[window.valid[~window.failed]] = True
    probs = np.full((n, len(p_cols)), np.nan)
    probs[window.valid] = window.probs
    best = probs[window.valid].argmax(axis=1) if len(window.valid) else np.zeros(0, int)
    labels = np.full(n, None, dtype=object)
    labels[window.valid] = np.asarray(predictor.labels, dtype=object)[best]
    truncated = np.zeros(n, dtype=bool)
    truncated[window.valid] = window.encoded.truncated
    confidence = np.nanmax(np.where(scored[:, None], probs, -1.0), axis=1)
    rows = np.flatnonzero(keep)
    scored_at = np.datetime64(results.utcnow(), "us")
    columns = {
        "id": window.ids.take(pa.array(rows)),
        "model_version": pa.array([version] * len(rows), pa.string()),
        "label": pa.array(labels[rows].tolist(), pa.string()),
        "confidence": pa.array(confidence[rows], mask=~scored[rows]),
        "reason": pa.array([window.reasons[i] for i in rows], pa.string()),
        "truncated": pa.array(truncated[rows]),
        "scored_at": pa.array(np.full(len(rows), scored_at)),
    }
    for j, col in enumerate(p_cols):
        columns[col] = pa.array(probs[rows, j], mask=~scored[rows])
    counts = {
        "scored": int(scored.sum()),
        "skipped": int(sum(r is not None for r in window.reasons)),
        "failed": int(window.failed.sum()),
        "truncated": int(truncated[scored].sum()),
    }
    return pa.table(columns), counts
