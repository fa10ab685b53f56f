"""Stratified, seeded train/validation/test split, and the recorded test split.

Reproducible by construction: rows arrive in canonical order (see `data.py`), each
class is shuffled by its own generator seeded from (seed, label), and every class
gives at least one row to each part. The trainer passes each text once
(`dedup.drop_duplicates`), so splitting rows splits texts: no text is in two parts.
The trainer saves the test rows with `marketpulse.checkpoint.write_test_split`, so
export and evaluation score exactly the rows training never saw.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from marketpulse.errors import MarketpulseError

PARTS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    train: list[int]
    validation: list[int]
    test: list[int]

    def sizes(self) -> dict[str, int]:
        return {part: len(getattr(self, part)) for part in PARTS}


def _parts(value: str | tuple[float, ...]) -> list[float]:
    try:
        parts = [float(p) for p in value.split(",")] if isinstance(value, str) else list(value)
    except ValueError:
        parts = []
    finite = all(math.isfinite(p) and p > 0 for p in parts) and math.isfinite(sum(parts))
    if len(parts) != 3 or not finite:
        raise MarketpulseError(
            f"--split {value!r} is not three positive finite numbers; pass TRAIN,VALIDATION,TEST "
            "such as 0.8,0.1,0.1"
        )
    return parts


def parse_fractions(value: str | tuple[float, ...]) -> tuple[float, float, float]:
    """`"0.8,0.1,0.1"` or `"80,10,10"` -> (0.8, 0.1, 0.1): rescaled to sum to 1
    (`rescale_note` says when that changed them)."""
    parts = _parts(value)
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def rescale_note(value: str | tuple[float, ...]) -> str | None:
    """The log line for a --split that does not sum to 1 (it is rescaled), else None.

    `"80,10,10"` -> "--split 80,10,10 sums to 100, not 1: using 0.8,0.1,0.1
    (train, validation, test)"."""
    parts = _parts(value)
    total = sum(parts)
    if math.isclose(total, 1.0, rel_tol=1e-9, abs_tol=1e-9):
        return None
    shown = value if isinstance(value, str) else ",".join(f"{p:g}" for p in parts)
    using = ",".join(f"{p / total:.4g}" for p in parts)
    return f"--split {shown} sums to {total:g}, not 1: using {using} (train, validation, test)"


def _label_seed(seed: int, label: str) -> int:
    # Independent of label order and Python's hash randomisation.
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:8], "little")


def stratified_split(labels: list[str], fractions: tuple[float, float, float], seed: int) -> Split:
    """Split row indices per label; every label lands in all three parts."""
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    parts: dict[str, list[int]] = {part: [] for part in PARTS}
    for label in sorted(by_label):
        idx = np.array(by_label[label])
        if len(idx) < len(PARTS):
            raise MarketpulseError(
                f"label {label!r} has only {len(idx)} rows; each class needs at least "
                f"{len(PARTS)} to appear in train, validation and test; add rows or drop that label"
            )
        np.random.default_rng(_label_seed(seed, label)).shuffle(idx)
        n_val = max(1, round(len(idx) * fractions[1]))
        n_test = max(1, round(len(idx) * fractions[2]))
        n_val, n_test = min(n_val, len(idx) - 2), min(n_test, len(idx) - 2)
        n_train = len(idx) - n_val - n_test
        if n_train < 1:
            n_val, n_test = 1, 1
            n_train = len(idx) - 2
        parts["train"] += idx[:n_train].tolist()
        parts["validation"] += idx[n_train : n_train + n_val].tolist()
        parts["test"] += idx[n_train + n_val :].tolist()
    return Split(*(sorted(parts[p]) for p in PARTS))
