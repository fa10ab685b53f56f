"""Does tonight's text still look like training? The model's output profile and the PSI.

Shared by export (which writes the reference) and the runtime (which compares each run
with it); needs numpy and tokenizers only.

A `Profile` is what the model made of a set of texts: how many got each label, how
many fell in each of ten equal confidence bins on [0, 1], and how many were
*unknown-token heavy* (at least UNKNOWN_HEAVY_FRACTION of their word pieces are the
tokenizer's unknown token: emoji, scripts the vocabulary lacks, binary junk). Export
stores the profile of its check texts (the held-out test split, scored by the bundle's
fp32 graph) in the manifest under `drift_reference` (marketpulse/bundle.py); each
scoring run builds its own and compares:

- PSI (population stability index) of the label mix and of the confidence histogram:
  sum over bins of (a - e) * ln(a / e), with a and e the run's and the reference's
  shares, each floored at 1e-4 so an empty bin counts without dividing by zero.
  Convention: < 0.1 stable, 0.1-0.2 moderate, > 0.2 (PSI_WARN) a real change.
- the share of unknown-token-heavy texts, against the reference's share.

A run warns when either PSI is above PSI_WARN or the unknown-heavy share is more than
UNKNOWN_RISE_WARN above the reference's, and only when it scored at least MIN_ROWS rows
and the reference holds at least MIN_ROWS (below that, a PSI is mostly sampling noise:
a 60-row reference against 60 more rows of the same text measured PSI 0.29-0.33).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

CONFIDENCE_EDGES = [round(i / 10, 1) for i in range(11)]
UNKNOWN_HEAVY_FRACTION = 0.1
PSI_WARN = 0.2
UNKNOWN_RISE_WARN = 0.05
MIN_ROWS = 100
_FLOOR = 1e-4


@dataclass
class Profile:
    labels: list[str]
    label_counts: np.ndarray = None  # (n_labels,) int
    confidence_counts: np.ndarray = None  # (len(CONFIDENCE_EDGES) - 1,) int
    unknown_heavy: int | None = 0  # None: not counted (an engine that does not report it)
    rows: int = 0
    source: str = ""

    def __post_init__(self):
        if self.label_counts is None:
            self.label_counts = np.zeros(len(self.labels), np.int64)
        if self.confidence_counts is None:
            self.confidence_counts = np.zeros(len(CONFIDENCE_EDGES) - 1, np.int64)

    def add(self, label_index: np.ndarray, confidence: np.ndarray, unknown_heavy: int | None):
        """Count scored rows: their label indices and confidences."""
        self.label_counts += np.bincount(label_index, minlength=len(self.labels))
        self.confidence_counts += np.histogram(confidence, bins=CONFIDENCE_EDGES)[0]
        self.rows += len(label_index)
        if unknown_heavy is None or self.unknown_heavy is None:
            self.unknown_heavy = None
        else:
            self.unknown_heavy += int(unknown_heavy)

    @property
    def unknown_share(self) -> float | None:
        if self.unknown_heavy is None or not self.rows:
            return None
        return self.unknown_heavy / self.rows

    def to_manifest(self) -> dict:
        return {
            "texts": self.source,
            "rows": self.rows,
            "labels": dict(zip(self.labels, self.label_counts.tolist(), strict=True)),
            "confidence_edges": CONFIDENCE_EDGES,
            "confidence_counts": self.confidence_counts.tolist(),
            "unknown_heavy": self.unknown_heavy,
            "unknown_heavy_fraction": UNKNOWN_HEAVY_FRACTION,
        }

    @classmethod
    def from_manifest(cls, ref: dict, labels: list[str]) -> Profile:
        """The manifest's reference, its label counts in `labels`' order (the bundle's).

        The manifest is written with sorted keys, so the order of `ref["labels"]` says
        nothing. A reference counted with other confidence bins or another unknown-heavy
        cut-off than this version's cannot be compared: `UnreadableReference`.
        """
        try:
            counts = {str(k): int(v) for k, v in ref["labels"].items()}
            confidence = np.array(ref["confidence_counts"], np.int64)
            rows = int(ref["rows"])
            edges = [float(e) for e in ref.get("confidence_edges", CONFIDENCE_EDGES)]
            fraction = float(ref.get("unknown_heavy_fraction", UNKNOWN_HEAVY_FRACTION))
            unknown = ref.get("unknown_heavy")
            unknown = None if unknown is None else int(unknown)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UnreadableReference(f"{type(exc).__name__}: {exc}") from None
        if set(counts) != set(labels):
            raise UnreadableReference(
                f"its labels {sorted(counts)} are not the bundle's {list(labels)}"
            )
        if edges != CONFIDENCE_EDGES or confidence.shape != (len(CONFIDENCE_EDGES) - 1,):
            raise UnreadableReference(
                f"confidence bins {edges} are not this version's {CONFIDENCE_EDGES}"
            )
        if fraction != UNKNOWN_HEAVY_FRACTION:
            unknown = None  # counted at another cut-off: not comparable, not measured
        return cls(
            labels=list(labels),
            label_counts=np.array([counts[k] for k in labels], np.int64),
            confidence_counts=confidence,
            unknown_heavy=unknown,
            rows=rows,
            source=ref.get("texts", ""),
        )


class UnreadableReference(ValueError):
    """A manifest's `drift_reference` this version cannot compare a run with."""


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    e = np.maximum(np.asarray(expected, float) / max(np.sum(expected), 1), _FLOOR)
    a = np.maximum(np.asarray(actual, float) / max(np.sum(actual), 1), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@lru_cache(maxsize=8)
def unknown_token_id(tokenizer_path: str) -> int | None:
    """The id of the tokenizer's unknown token ([UNK] for BERT), None if it has none."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    unk = getattr(tok.model, "unk_token", None)
    return None if unk is None else tok.token_to_id(unk)


def unknown_heavy_rows(
    flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, unknown_id: int | None
) -> np.ndarray:
    """Bool per row of token ids (row i is flat[starts[i]:starts[i] + lengths[i]]): its word
    pieces, [CLS] and [SEP] aside, are at least UNKNOWN_HEAVY_FRACTION unknown."""
    n = len(lengths)
    if unknown_id is None or not n:
        return np.zeros(n, dtype=bool)
    unknown = flat == unknown_id
    per_row = np.bincount(np.repeat(np.arange(n), lengths), unknown, minlength=n)
    ends = lengths > 0
    per_row[ends] -= unknown[starts[ends]]  # [CLS]
    two = lengths > 1
    per_row[two] -= unknown[(starts + lengths - 1)[two]]  # [SEP]
    pieces = np.maximum(lengths - 2, 0)
    return (pieces > 0) & (per_row >= UNKNOWN_HEAVY_FRACTION * pieces)


def count_unknown_heavy(ids: list[np.ndarray], unknown_id: int | None) -> int:
    """`unknown_heavy_rows` for a list of per-row id arrays (export's reference)."""
    lengths = np.array([len(row) for row in ids], dtype=np.int64)
    flat = np.concatenate(ids) if len(ids) else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return int(unknown_heavy_rows(flat, starts, lengths, unknown_id).sum())


def reference(
    probs: np.ndarray, ids: list[np.ndarray], tokenizer_path: Path, labels, source: str
) -> dict:
    """The manifest's `drift_reference` for check texts scored as `probs`."""
    profile = Profile(list(labels), source=source)
    unknown = count_unknown_heavy(ids, unknown_token_id(str(tokenizer_path)))
    profile.add(probs.argmax(axis=1), probs.max(axis=1), unknown)
    return profile.to_manifest()


@dataclass
class Drift:
    rows: int
    psi_label: float
    psi_confidence: float
    unknown_heavy_share: float | None
    reference_unknown_share: float | None
    warnings: list[str] = field(default_factory=list)


def compare(ref: Profile, run: Profile) -> Drift:
    """The run's profile against the reference; `warnings` says what crossed a threshold."""
    if ref.labels != run.labels:
        raise ValueError("reference and run profiles have different labels")
    drift = Drift(
        rows=run.rows,
        psi_label=psi(ref.label_counts, run.label_counts),
        psi_confidence=psi(ref.confidence_counts, run.confidence_counts),
        unknown_heavy_share=run.unknown_share,
        reference_unknown_share=ref.unknown_share,
    )
    if run.rows < MIN_ROWS or ref.rows < MIN_ROWS:
        return drift
    if drift.psi_label > PSI_WARN:
        drift.warnings.append(f"label mix PSI {drift.psi_label:.2f} > {PSI_WARN}")
    if drift.psi_confidence > PSI_WARN:
        drift.warnings.append(f"confidence PSI {drift.psi_confidence:.2f} > {PSI_WARN}")
    run_u, ref_u = drift.unknown_heavy_share, drift.reference_unknown_share
    if run_u is not None and ref_u is not None and run_u - ref_u > UNKNOWN_RISE_WARN:
        drift.warnings.append(
            f"{run_u:.1%} of texts are unknown-token heavy (reference {ref_u:.1%})"
        )
    return drift
