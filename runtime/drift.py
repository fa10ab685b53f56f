"""Drift per run: this run's output profile against the bundle's reference.

`RunDrift` is fed every committed chunk (`Run.flush`): the scores rows give the label
and confidence of each scored row, the chunk's counters the unknown-token-heavy rows
(`windows.results_table` counts them). When the run ends, `finish` compares the profile
with the manifest's `drift_reference` (marketpulse.drift) and `record` writes the
figures into the run's row:

    psi_label, psi_confidence    PSI against the reference (NULL: not measured)
    unknown_heavy_share          share of this run's scored rows that are unknown heavy
    drift_warn                   whether the run warned (NULL: not measured)
    drift_note                   the warning, or a note on the figures (too few rows
                                 to warn on, no reference to compare with)

The warning goes to stderr as one line starting `warning: drift`. A bundle exported
before drift references existed, or one whose reference this version cannot read,
scores as before: NULL figures and a note saying to re-export.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marketpulse import drift
from marketpulse.bundle import Bundle
from marketpulse.results_schema import RUNS
from marketpulse.sql import quote_ident

NO_REFERENCE = (
    "bundle has no drift reference (exported before drift checks existed); "
    "re-export it with `marketpulse export` to get drift figures"
)
RE_EXPORT = "re-export it with `marketpulse export` to get drift figures"


@dataclass
class DriftResult:
    psi_label: float | None = None
    psi_confidence: float | None = None
    unknown_heavy_share: float | None = None
    note: str | None = None
    warn: bool | None = None  # None: nothing measured to warn on
    hint: str = ""  # what to do about the warning (printed, not stored)

    def to_dict(self) -> dict:
        return {
            "psi_label": self.psi_label,
            "psi_confidence": self.psi_confidence,
            "unknown_heavy_share": self.unknown_heavy_share,
            "note": self.note,
            "warn": self.warn,
        }


class RunDrift:
    def __init__(self, bundle: Bundle):
        ref = bundle.drift_reference
        self.labels = bundle.labels
        self.reference = None
        self.no_reference = NO_REFERENCE
        if ref:
            try:
                self.reference = drift.Profile.from_manifest(ref, self.labels)
            except drift.UnreadableReference as exc:
                self.no_reference = f"bundle's drift reference is unreadable ({exc}); {RE_EXPORT}"
        self.profile = drift.Profile(self.labels)
        self._index = {label: i for i, label in enumerate(self.labels)}

    def add(self, rows, counts: dict[str, int]) -> None:
        """Count one chunk's scored rows (a pyarrow table with label and confidence)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        label = rows.column("label").combine_chunks()
        if not pa.types.is_dictionary(label.type):
            label = pc.dictionary_encode(label)
        # map the chunk's dictionary onto the bundle's label order once, then per row in numpy
        codes = np.array([self._index[v] for v in label.dictionary.to_pylist()], np.int64)
        valid = np.asarray(label.is_valid(), bool)
        index = codes[np.asarray(label.indices.fill_null(0), np.int64)[valid]]
        confidence = rows.column("confidence").to_numpy(zero_copy_only=False)[valid]
        self.profile.add(index, np.asarray(confidence, float), counts.get("unknown_heavy"))

    def finish(self) -> DriftResult:
        share = self.profile.unknown_share
        if self.reference is None:
            return DriftResult(unknown_heavy_share=share, note=self.no_reference)
        if not self.profile.rows:
            return DriftResult(note="no rows scored in this run")
        d = drift.compare(self.reference, self.profile)
        result = DriftResult(d.psi_label, d.psi_confidence, d.unknown_heavy_share)
        result.warn = bool(d.warnings)
        if d.warnings:
            result.note = (
                f"output unlike the bundle's reference ({self.reference.source}): "
                f"{'; '.join(d.warnings)}"
            )
            result.hint = _hint(d)
        elif self.profile.rows < drift.MIN_ROWS:
            result.warn = None
            result.note = f"only {self.profile.rows} rows scored; no warning below {drift.MIN_ROWS}"
        elif self.reference.rows < drift.MIN_ROWS:
            result.warn = None
            result.note = (
                f"the bundle's reference holds only {self.reference.rows} rows; no warning "
                f"below {drift.MIN_ROWS} (train on more rows for a larger test split, and re-export)"
            )
        return result


def _hint(d: drift.Drift) -> str:
    """What a user can do about the checks that fired."""
    hints = []
    if max(d.psi_label, d.psi_confidence) > drift.PSI_WARN:
        hints.append(
            f"PSI above {drift.PSI_WARN} means this text is no longer like the training "
            "data; check the source, or retrain"
        )
    if any("unknown-token heavy" in w for w in d.warnings):
        hints.append(
            "many texts are word pieces the tokenizer does not know; check the text's "
            "encoding and language, or train from a base model whose vocabulary covers it"
        )
    return "; ".join(hints)


def record(con, run_id: str, result: DriftResult) -> None:
    con.execute(
        f"UPDATE {quote_ident(RUNS)} SET psi_label = ?, psi_confidence = ?, "
        "unknown_heavy_share = ?, drift_warn = ?, drift_note = ? WHERE run_id = ?",
        [
            result.psi_label,
            result.psi_confidence,
            result.unknown_heavy_share,
            result.warn,
            result.note,
            run_id,
        ],
    )


def message(result: DriftResult) -> str | None:
    """The stderr line for a run, None when there is nothing to say."""
    if result.warn:
        return f"warning: drift: {result.note} ({result.hint})"
    if result.note and result.note.endswith(RE_EXPORT):
        return f"note: {result.note}"
    return None
