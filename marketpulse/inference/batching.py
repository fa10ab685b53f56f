"""Turning texts into model inputs: bulk tokenizing, length-sorting, token-budget batches.

Knows nothing about ONNX Runtime or DuckDB. The contract:

- `TextEncoder.encode(texts)` tokenizes a whole window of texts (a list of str or an
  Arrow string array without NULLs) with the Rust `tokenizers` library, truncating at
  the bundle's max length and reporting which rows were truncated. The window is cut
  into one slice per thread, each encoded serially in one call that releases the GIL
  (measured faster than the library's own rayon pool, whose idle threads spin on the
  cores DuckDB and Python need). Rows of plain ASCII skip the BERT normalizer (see
  `TextEncoder`). The ids come back as one flat int64 array with row offsets
  (`Encoded`), not one array per row.
- `plan_batches(lengths, ...)` sorts a window by token length and cuts it into
  batches whose *padded* size (rows x longest row) stays under a token budget, so
  short texts run in wide batches and long texts in narrow ones, with almost no
  padding either way.
- `Encoded.batch(rows, pad_id)` builds the int64 `input_ids` / `attention_mask` arrays
  for one batch with a single gather; `pad(seqs)` does the same for a list of arrays.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from marketpulse.urls import URL_PATTERN, URL_TOKEN, normalizes_urls

# A text this many characters per allowed token is truncated anyway; clipping it
# before tokenizing keeps one pathological multi-megabyte row from stalling a window.
_CHARS_PER_TOKEN_CLIP = 24

DEFAULT_MAX_BATCH_ROWS = 256
# Fewer rows than this are not worth a tokenizing thread of their own.
_MIN_SLICE_ROWS = 256
# A character outside printable ASCII (space to tilde): its row takes the full path.
_NOT_PRINTABLE_ASCII = r"[^\x20-\x7e]"


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
    """The bundle's tokenizer, set up for truncation at `max_length` and no padding.

    `threads` > 1 encodes a window in that many slices at once, on threads of its own.

    The fast path: BERT's normalizer (clean control characters and whitespace, space
    out CJK, NFD and strip accents, lowercase) costs about a third of tokenizing. On a
    row of printable ASCII (space to tilde) its only effect is the lowercasing, so such
    rows are lowercased by Arrow and encoded by a copy of the tokenizer without the
    normalizer, whose added tokens that match normalized text are stored normalized: the
    same ids (tests/test_text_encoder.py checks it on any text). A row that spells out an
    added token matched on the raw text (BERT's `[CLS]`, `[MASK]`, ...: the original case
    counts) takes the full path. A tokenizer trained with links replaced
    (marketpulse/urls.py: that Replace, then BERT's normalizer) keeps the fast path, with
    the links replaced by Arrow too. Any other normalizer: every row takes the full path.

    Side effect: the `tokenizers` library's own thread pool is switched off for the whole
    process (it reads only the environment), since the slices are the parallelism.
    """

    def __init__(self, tokenizer_path: Path, max_length: int, threads: int = 1):
        from tokenizers import Tokenizer

        self.max_length = int(max_length)
        self.threads = max(1, int(threads))
        self._tok = Tokenizer.from_file(str(tokenizer_path))
        padding = self._tok.padding or {}
        self.pad_id = int(padding.get("pad_id", 0))
        # The exported tokenizer.json may carry fixed-length padding; padding is done
        # per batch here instead, to the longest row of that batch only.
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_length)
        self._clip = self.max_length * _CHARS_PER_TOKEN_CLIP
        self._plain, self._lowercase, self._full_path_re, self._urls = _plain_path(self._tok)
        self._pool = None
        if self.threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tokenize")
        if os.environ.get("TOKENIZERS_PARALLELISM") != "false":  # read at every call
            os.environ["TOKENIZERS_PARALLELISM"] = "false"

    def encode(self, texts) -> Encoded:
        """Tokenize a list of str, or an Arrow string array without NULLs."""
        import pyarrow as pa

        if isinstance(texts, list):
            texts = pa.array(texts, pa.string())
        elif isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            texts = texts.cast(pa.string())  # string_view, dictionary, an empty pa.array([])
        if texts.null_count:
            raise ValueError(f"{texts.null_count} NULL text(s): set NULL rows aside first")
        n = len(texts)
        slices = min(self.threads, n // _MIN_SLICE_ROWS)
        if slices < 2:
            return self._encode_slice(texts)
        bounds = np.linspace(0, n, slices + 1).astype(int)
        parts = [texts.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)]
        return _concat(list(self._pool.map(self._encode_slice, parts)))

    def seen_chars(self, texts: list[str]) -> list[int]:
        """For each text, the character offset where the tokens the model sees end.

        Text past it is truncated away (or clipped before tokenizing); offsets are the
        tokenizer's own, in the text's characters even through a normalizer."""
        encodings = self._tok.encode_batch([t[: self._clip] for t in texts])
        # Special tokens sit at (0, 0), so the largest end is the last real token's.
        return [max((end for _, end in e.offsets), default=0) for e in encodings]

    def _encode_slice(self, texts) -> Encoded:
        """One serial call per path: plain rows without the normalizer, the rest with it."""
        import pyarrow.compute as pc

        too_long = pc.greater(pc.utf8_length(texts), self._clip)
        clipped = too_long.to_numpy(zero_copy_only=False)
        if clipped.any():
            texts = pc.if_else(too_long, pc.utf8_slice_codeunits(texts, 0, self._clip), texts)
        if self._plain is None:
            plain = np.zeros(len(texts), dtype=bool)
        else:
            full = pc.match_substring_regex(texts, self._full_path_re)
            plain = np.logical_not(full.to_numpy(zero_copy_only=False))
        if not plain.any():  # also every row when there is no plain path, and no rows
            encoded = self._encode_rows(texts, False)
        elif plain.all():
            encoded = self._encode_rows(texts, True)
        else:
            rows = [np.flatnonzero(~plain), np.flatnonzero(plain)]
            parts = [
                self._encode_rows(texts.take(r), p)
                for r, p in zip(rows, (False, True), strict=True)
            ]
            encoded = _scatter(parts, rows, len(texts))
        encoded.truncated |= clipped
        return encoded

    def _encode_rows(self, texts, plain: bool) -> Encoded:
        if plain:
            import pyarrow.compute as pc

            tokenizer = self._plain
            if self._urls:
                texts = pc.replace_substring_regex(texts, URL_PATTERN, URL_TOKEN)
            if self._lowercase:
                texts = pc.ascii_lower(texts)
        else:
            tokenizer = self._tok
        # No char offsets: the runtime never maps tokens back to characters.
        encodings = tokenizer.encode_batch_fast(texts.to_pylist(), add_special_tokens=True)
        lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
        flat = np.fromiter(
            itertools.chain.from_iterable(e.ids for e in encodings), np.int64, int(lengths.sum())
        )
        overflow = np.fromiter((bool(e.overflowing) for e in encodings), bool, len(encodings))
        return Encoded(flat=flat, lengths=lengths, truncated=overflow)


def _plain_path(tokenizer):
    """(tokenizer without normalizer, lowercase?, regex of rows that must take the full
    path, replace links?), or (None, False, "", False) when the normalizer is not BERT's,
    alone or after the link replacement."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.to_str())
    normalizer = spec.get("normalizer") or {}
    urls = normalizes_urls(normalizer)
    if urls and len(normalizer["normalizers"]) == 2:
        normalizer = normalizer["normalizers"][1]
    if normalizer.get("type") != "BertNormalizer":
        return None, False, "", False
    added = spec.get("added_tokens", [])
    # Added tokens matched on the raw text (before the normalizer ran): their rows take
    # the full path. Those matched on normalized text: stored normalized, as the full
    # tokenizer matches them.
    raw = [t["content"] for t in added if not t.get("normalized")]
    full_path = "|".join([_NOT_PRINTABLE_ASCII, *map(_re2_literal, raw)])
    for token in added:
        if token.get("normalized"):
            token["content"] = tokenizer.normalizer.normalize_str(token["content"])
    spec["normalizer"] = None
    # The spec carries the truncation and no padding set above.
    plain = Tokenizer.from_str(json.dumps(spec))
    return plain, bool(normalizer.get("lowercase", True)), full_path, urls


def _re2_literal(text: str) -> str:
    """An RE2 pattern matching `text` literally (every character as a \\x{...} escape)."""
    return "".join(f"\\x{{{ord(c):x}}}" for c in text)


def _concat(parts: list[Encoded]) -> Encoded:
    """Slices encoded apart, joined back in order."""
    return Encoded(
        flat=np.concatenate([p.flat for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts]),
        truncated=np.concatenate([p.truncated for p in parts]),
    )


def _scatter(parts: list[Encoded], rows: list[np.ndarray], n: int) -> Encoded:
    """Row groups encoded apart (`parts[k]` holds rows `rows[k]`), back in input order."""
    joined = _concat(parts)
    order = np.concatenate(rows)  # joined row j is input row order[j]
    lengths = np.empty(n, dtype=np.int64)
    lengths[order] = joined.lengths
    truncated = np.empty(n, dtype=bool)
    truncated[order] = joined.truncated
    # Input row i's ids sit in `joined.flat` at the start joined row where(order == i) had.
    source_start = np.empty(n, dtype=np.int64)
    source_start[order] = joined.starts
    starts = np.cumsum(lengths) - lengths
    row_of_token = np.repeat(np.arange(n), lengths)
    at = source_start[row_of_token] + (np.arange(len(joined.flat)) - starts[row_of_token])
    return Encoded(flat=joined.flat[at], lengths=lengths, truncated=truncated)


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
