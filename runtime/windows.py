"""A window of source rows -> the scores rows for it, in three stages both engines run.

    tokenize_window(ids, texts, predictor)  NULL/blank texts set aside with their
                                            reason, each distinct text tokenized once
    infer_window(window, predictor, ...)    token-budget batches through ONNX Runtime
    results_table(window, predictor, ...)   the rows for the scores table + counters

The local engine runs them on its reader, main and writer threads; the Ray engine runs
all three inside one actor call. Either way a row gets the same label and
probabilities. A window knows nothing about DuckDB, the run record or threads.

Columnar throughout: a window's texts stay an Arrow array (NULL and blank found by
Arrow compute, distinct texts by dictionary encoding), its results are numpy arrays,
and label, reason and model_version leave as dictionary-encoded Arrow columns; no
Python object per row. Market text repeats (retweets, syndicated headlines), so a text
that occurs several times in a window is tokenized and inferred once and its result
copied to the other rows; `counts["duplicates"]` says how many rows were copies.

A row whose batch fails in ONNX Runtime is retried alone (`Predictor.run_batches`); if
it still fails it is marked in `Window.failed`, counted as failed and left out of the
scores rows, so the next run tries it again. A window where every row failed is an
error: the bundle or the device is broken, not one row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marketpulse import drift
from marketpulse.errors import MarketpulseError
from marketpulse.inference.batching import Encoded
from marketpulse.inference.predictor import Predictor
from marketpulse.results_schema import REASONS
from marketpulse.runtime import results
from marketpulse.text import blank_mask

NULL_TEXT, EMPTY_TEXT = 1 + REASONS.index("null_text"), 1 + REASONS.index("empty_text")


@dataclass
class Window:
    ids: object  # pyarrow Array, the source id type
    reasons: np.ndarray  # int8 per row: 0 to score, else 1 + its index in REASONS
    valid: np.ndarray  # int indices of rows to score
    distinct: np.ndarray  # per valid row: the index of its text in `encoded`
    encoded: Encoded | None = None  # each distinct text of the valid rows, once
    probs: np.ndarray | None = None  # (len(valid), n_labels)
    failed: np.ndarray | None = None  # bool (len(valid),)
    rescored: np.ndarray | None = None  # bool (len(valid),): probabilities from fp32

    def skipped_reasons(self) -> dict[str, int]:
        """Rows set aside without inference, per reason."""
        counts = np.bincount(self.reasons, minlength=len(REASONS) + 1)[1:]
        return {reason: int(n) for reason, n in zip(REASONS, counts, strict=True) if n}

    def copied(self) -> np.ndarray:
        """Bool per valid row: scored with the result of an earlier row of the same text."""
        copies = np.ones(len(self.valid), dtype=bool)
        copies[np.unique(self.distinct, return_index=True)[1]] = False
        return copies & ~self.failed


def tokenize_window(ids, texts, predictor: Predictor) -> Window:
    """A window of source rows (Arrow id and text arrays): NULL/blank text set aside
    with its reason, each distinct remaining text tokenized once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    reasons = np.zeros(len(texts), dtype=np.int8)
    blank = blank_mask(texts).fill_null(False)
    reasons[blank.to_numpy(zero_copy_only=False)] = EMPTY_TEXT
    reasons[texts.is_null().to_numpy(zero_copy_only=False)] = NULL_TEXT
    valid = np.flatnonzero(reasons == 0)
    encoded = pc.dictionary_encode(texts.take(valid) if len(valid) < len(texts) else texts)
    window = Window(ids, reasons, valid, encoded.indices.to_numpy().astype(np.int64))
    window.encoded = predictor.encoder.encode(encoded.dictionary)
    return window


def infer_window(window: Window, predictor: Predictor, batch_tokens: int | None) -> None:
    """Fill `window.probs` and `window.failed`; raise when no row could be scored."""
    probs, failed, error, rescored = predictor.run_batches(window.encoded, batch_tokens)
    window.probs, window.failed = probs[window.distinct], failed[window.distinct]
    window.rescored = rescored[window.distinct]
    if len(window.valid) and window.failed.all():
        raise MarketpulseError(
            f"ONNX Runtime failed on every row of a window ({error}); check the bundle with "
            "`marketpulse inspect`, or rerun with --device cpu"
        ) from error


def _unknown_heavy(encoded: Encoded, unknown_id: int | None) -> np.ndarray:
    """Bool per encoded text: is it unknown-token heavy (`drift.unknown_heavy_rows`)."""
    return drift.unknown_heavy_rows(encoded.flat, encoded.starts, encoded.lengths, unknown_id)


def _dictionary(codes: np.ndarray, values, valid: np.ndarray | None = None):
    """A dictionary-encoded string column: `values[codes]`, NULL where not `valid`."""
    import pyarrow as pa

    mask = None if valid is None else ~valid
    return pa.DictionaryArray.from_arrays(
        pa.array(codes.astype(np.int32, copy=False), mask=mask), pa.array(values, pa.string())
    )


def results_table(window: Window, predictor: Predictor, version: str, p_cols: list[str]):
    """The window's rows for the scores table (failed rows left out) and its counters."""
    import pyarrow as pa

    n, valid, ok = len(window.reasons), window.valid, ~window.failed
    scored = np.zeros(n, dtype=bool)
    scored[valid[ok]] = True
    probs = np.zeros((len(p_cols), n))  # one contiguous row per probability column
    probs[:, valid] = window.probs.T
    label = np.zeros(n, dtype=np.int64)
    label[valid] = window.probs.argmax(axis=1) if len(valid) else 0
    truncated = np.zeros(n, dtype=bool)
    truncated[valid] = window.encoded.truncated[window.distinct]
    confidence = np.zeros(n)
    confidence[valid] = window.probs.max(axis=1) if len(valid) else 0.0
    reasons = window.reasons.astype(np.int64)
    ids = window.ids
    if window.failed.any():  # rare: the failed rows are left out
        rows = np.ones(n, dtype=bool)
        rows[valid[window.failed]] = False
        rows = np.flatnonzero(rows)
        ids, scored, probs, label, truncated = (
            ids.take(pa.array(rows)),
            scored[rows],
            probs[:, rows],
            label[rows],
            truncated[rows],
        )
        confidence, reasons = confidence[rows], reasons[rows]
    m = len(scored)
    columns = {
        "id": ids,
        "model_version": _dictionary(np.zeros(m, dtype=np.int32), [version]),
        "label": _dictionary(label, predictor.labels, scored),
        "confidence": pa.array(confidence, mask=~scored),
        "reason": _dictionary(np.maximum(reasons - 1, 0), REASONS, reasons > 0),
        "truncated": pa.array(truncated),
        "scored_at": pa.array(np.full(m, np.datetime64(results.utcnow(), "us"))),
    }
    for j, col in enumerate(p_cols):
        columns[col] = pa.array(probs[j], mask=~scored)
    unknown_heavy = _unknown_heavy(
        window.encoded, drift.unknown_token_id(str(predictor.bundle.tokenizer_path))
    )
    counts = {
        "scored": int(scored.sum()),
        "skipped": int(np.count_nonzero(window.reasons)),
        "failed": int(window.failed.sum()),
        "truncated": int(truncated[scored].sum()),
        "duplicates": int(window.copied().sum()),
        # rows whose quantized scores hesitated and were rescored by fp32 (predictor.py)
        "rescored": 0 if window.rescored is None else int((window.rescored & ok).sum()),
        # texts mostly made of unknown tokens, for the run's drift figures (runtime/drift.py)
        "unknown_heavy": int(unknown_heavy[window.distinct][ok].sum()),
    }
    return pa.table(columns), counts
