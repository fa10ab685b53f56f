"""Turning texts into model inputs: bulk tokenizing, length-sorting, token-budget batches.

Knows nothing about ONNX Runtime or DuckDB. The contract:

- `TextEncoder.encode(texts)` tokenizes a whole window of texts (a list of str or an
  Arrow string array without NULLs) in one call into the Rust `tokenizers` library,
  which releases the GIL and runs on its own thread pool, truncating at the bundle's
  max length and reporting which rows were truncated. The ids come back as one flat
  int64 array with row offsets (`Encoded`), not one array per row.
- `plan_batches(lengths, ...)` sorts a window by token length and cuts it into
  batches whose *padded* size (rows x longest row) stays under a token budget, so
  short texts run in wide batches and long texts in narrow ones, with almost no
  padding either way.
- `Encoded.batch(rows, pad_id)` builds the int64 `input_ids` / `attention_mask` arrays
  for one batch with a single gather; `pad(seqs)` does the same for a list of arrays.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

# A text this many characters per allowed token is truncated anyway; clipping it
# before tokenizing keeps one pathological multi-megabyte row from stalling a window.
_CHARS_PER_TOKEN_CLIP = 24

DEFAULT_MAX_BATCH_ROWS = 256


@dataclass
class Encoded:
    """Token ids of a window of texts, in input order: row i is flat[starts[i]:][:lengths[i]]."""

    flat: np.ndarray  # int64, every row's ids (special tokens included) end to end
    lengths: np.ndarray  # int64 (n,)
    truncated: np.ndarray  # bool (n,)

    @cached_property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths

    @cached_property
    def ids(self) -> list[np.ndarray]:
        """One int64 array per row (views into `flat`)."""
        return np.split(self.flat, np.cumsum(self.lengths)[:-1]) if len(self.lengths) else []

    def batch(self, rows: np.ndarray, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int64, for `rows` right-padded to the longest."""
        lengths = self.lengths[rows]
        width = max(int(lengths.max()), 1)
        cols = np.arange(width)
        mask = cols < lengths[:, None]
        # Past a row's end the index is clamped, and the gathered id replaced by pad_id.
        at = np.minimum(self.starts[rows][:, None] + cols, max(len(self.flat) - 1, 0))
        input_ids = np.where(mask, self.flat[at] if len(self.flat) else pad_id, pad_id)
        return input_ids.astype(np.int64, copy=False), mask.astype(np.int64)


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

    def encode(self, texts) -> Encoded:
        """Tokenize a list of str, or an Arrow string array without NULLs."""
        if isinstance(texts, list):
            clipped = np.fromiter((len(t) > self._clip for t in texts), bool, len(texts))
        else:  # Arrow: the lengths without a Python string per row
            import pyarrow.compute as pc

            clipped = pc.greater(pc.utf8_length(texts), self._clip).to_numpy(zero_copy_only=False)
            texts = texts.to_pylist()
        if clipped.any():
            texts = [t[: self._clip] if c else t for t, c in zip(texts, clipped, strict=True)]
        # No char offsets: the runtime never maps tokens back to characters.
        encodings = self._tok.encode_batch_fast(texts, add_special_tokens=True)
        lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
        flat = np.fromiter(
            itertools.chain.from_iterable(e.ids for e in encodings), np.int64, int(lengths.sum())
        )
        overflow = np.fromiter((bool(e.overflowing) for e in encodings), bool, len(encodings))
        return Encoded(flat=flat, lengths=lengths, truncated=overflow | clipped)


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
