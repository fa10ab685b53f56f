"""Keep each text once, so that no text can land in both the training and the test split.

`drop_duplicates` (training calls it; `evaluate` scores every row as read) judges texts
the same when they are equal after `str.strip()` (`duplicate_key`), the whitespace
`marketpulse.text.is_blank` judges by; case and inner whitespace are kept, as they can
carry meaning. A text whose rows all agree is kept once (its other rows count as
`duplicate`). A text whose rows disagree keeps the label that more than half of them
hold, else it is dropped (its dropped rows count as `conflicting_label`). `Duplicates`
is its account, for metrics.json and the log.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from marketpulse.train.data import LabeledRows


def _count(n: int, noun: str) -> str:
    """`_count(1, "row")` -> "1 row", `_count(2, "row")` -> "2 rows"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Duplicates:
    """What `drop_duplicates` did, counted in texts; the `_rows` fields count the rows
    skipped, as `LabeledRows.skipped` does (`duplicate`, `conflicting_label`)."""

    repeated: int = 0  # texts on several rows that all agree on the label: kept once
    conflicting: int = 0  # texts whose rows disagree on the label
    majority_kept: int = 0  # of those, kept with the label more than half their rows hold
    repeated_rows: int = 0  # rows skipped as copies of a repeated text
    conflicting_rows: int = 0  # rows skipped from conflicting texts (all, when dropped)

    @property
    def dropped(self) -> int:
        """Conflicting texts with no majority label: dropped altogether."""
        return self.conflicting - self.majority_kept

    def record(self) -> dict[str, int]:
        """metrics.json's `rows.duplicate_texts`."""
        return {
            "repeated": self.repeated,
            "conflicting": self.conflicting,
            "majority_kept": self.majority_kept,
            "dropped": self.dropped,
        }

    def log_line(self) -> str | None:
        """The log line, counting texts and the rows skipped apart, e.g. '12 duplicate texts
        kept once (15 rows skipped); 3 texts had conflicting labels (2 kept with their
        majority label, 1 dropped; 7 rows skipped)'; None when no text was repeated."""
        if not (self.repeated or self.conflicting):
            return None
        parts = []
        if self.repeated:
            parts.append(
                f"{_count(self.repeated, 'duplicate text')} kept once "
                f"({_count(self.repeated_rows, 'row')} skipped)"
            )
        if not self.conflicting:
            parts.append("no text had conflicting labels")
        else:
            kept, dropped = self.majority_kept, self.dropped
            if not dropped:
                fate = f"kept with {'its' if kept == 1 else 'their'} majority label"
            elif not kept:
                fate = "dropped: no majority label"
            else:
                its = "its" if kept == 1 else "their"
                fate = f"{kept:,} kept with {its} majority label, {dropped:,} dropped"
            parts.append(
                f"{_count(self.conflicting, 'text')} had conflicting labels "
                f"({fate}; {_count(self.conflicting_rows, 'row')} skipped)"
            )
        return "; ".join(parts)


def duplicate_key(text: str) -> str:
    """What two texts must share to be the same text: equal after `str.strip()`, the
    whitespace `marketpulse.text.is_blank` judges by. Case is not folded."""
    return text.strip()


def drop_duplicates(rows: LabeledRows) -> LabeledRows:
    """Keep each text (`duplicate_key`) once, so no text is split across train and test.

    A text whose rows all carry one label keeps one row; the others are counted as
    `duplicate`. A text whose rows disagree keeps one row with the label more than half
    of its rows hold (the rest counted as `conflicting_label`), or, with no such label,
    none (all counted as `conflicting_label`). The row kept is the first in canonical
    order, so the result and its order are as reproducible as the rows read."""
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(rows.texts):
        groups.setdefault(duplicate_key(text), []).append(i)
    keep: list[int] = []
    skipped = {"duplicate": 0, "conflicting_label": 0}
    repeated = conflicting = majority_kept = 0
    for members in groups.values():
        votes = Counter(rows.labels[i] for i in members)
        if len(votes) == 1:
            keep.append(members[0])
            if len(members) > 1:
                repeated += 1
                skipped["duplicate"] += len(members) - 1
            continue
        conflicting += 1
        label, n = votes.most_common(1)[0]
        if 2 * n > len(members):  # a strict majority; a tie or a plurality is not one
            majority_kept += 1
            keep.append(next(i for i in members if rows.labels[i] == label))
            skipped["conflicting_label"] += len(members) - 1
        else:
            skipped["conflicting_label"] += len(members)
    keep.sort()  # the rows' canonical order
    return replace(
        rows,
        texts=[rows.texts[i] for i in keep],
        labels=[rows.labels[i] for i in keep],
        skipped={**rows.skipped, **skipped},
        duplicates=Duplicates(
            repeated,
            conflicting,
            majority_kept,
            repeated_rows=skipped["duplicate"],
            conflicting_rows=skipped["conflicting_label"],
        ),
        fingerprint_as_read=rows.fingerprint(),
    )
