"""Turning texts into model inputs: bulk tokenizing, length-sorting, token-budget batches.

Knows nothing about ONNX Runtime or DuckDB. The contract:

- `TextEncoder.encode(texts)` tokenizes a whole window of texts in one call into the
  Rust `tokenizers` library (which releases the GIL and runs on its own thread pool),
  truncating at the bundle's max length and reporting which rows were truncated.
- `plan_batches(lengths, ...)` sorts a window by token length and cuts it into
  batches whose *padded* size (rows x longest row) stays under a token budget, so
  short texts run in wide batches and long texts in narrow ones, with almost no
  padding either way.
- `pad(seqs)` builds the int64 `input_ids` / `attention_mask` arrays for one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A text this many characters per allowed token is truncated anyway; clipping it
# before tokenizing keeps one pathological multi-megabyte row from stalling a window.
_CHARS_PER_TOKEN_CLIP = 24

DEFAULT_MAX_BATCH_ROWS = 256


@dataclass
class Encoded:
    """Token ids of a window of texts, in input order."""

    ids: list[np.ndarray]  # int64 ids per row, special tokens included
    lengths: np.ndarray  # int64 (n,)
    truncated: np.ndarray  # bool (n,)


class TextEncoder:
    """The bundle's tokenizer, set up for truncation at `max_length` and no padding."""

    def __init__(self, tokenizer_path: Path, max_length: int):
        from tokenizers import Tokenizer

        self.max_length = int(max_length)
        self._tok = Tokenizer.from_file(str(tokenizer_path))
        padding = self._tok.padding or {}
        self.pad_id = int(padding.get("pad_id", 0))
        # The exported tokenizer.json may carry fixed-length padding; padding is done
        # per batch here instead, to the longest row of that batch only.
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_length)
        self._clip = self.max_length * _CHARS_PER_TOKEN_CLIP

    def encode(self, texts: list[str]) -> Encoded:
        clipped = np.fromiter((len(t) > self._clip for t in texts), bool, len(texts))
        if clipped.any():
            texts = [t[: self._clip] for t in texts]
        encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        overflow = np.fromiter((bool(e.overflowing) for e in encodings), bool, len(ids))
        return Encoded(ids=ids, lengths=lengths, truncated=overflow | clipped)


def plan_batches(
    lengths: np.ndarray, batch_tokens: int, max_rows: int = DEFAULT_MAX_BATCH_ROWS
) -> list[np.ndarray]:
    """Split row indices into length-sorted batches of at most `batch_tokens` padded tokens.

    Rows are visited longest first so each batch's padded width is its first row's
    length; a batch closes when adding a row would pass the budget or `max_rows`.
    A single row longer than the budget still gets a batch of its own.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        width = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_rows, batch_tokens // width))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def pad(seqs: list[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad a batch with `pad_id`; return (input_ids, attention_mask), both int64."""
    width = max(len(s) for s in seqs)
    input_ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    z = logits.astype(np.float32, copy=False)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
