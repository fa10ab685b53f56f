"""The canary: does the graph that ran still agree with the fp32 reference on this data?

Export's gate proves a quantized graph agrees with PyTorch on the check texts; the
texts a run scores may be unlike them. The sample holds the labels written, so rows int8
hesitated on and fp32 rescored (predictor.py) are compared as written. So each run keeps a seeded uniform sample of
the rows it scored (`Canary.add`, fed every inferred window: each row draws a random
key and the `rows` smallest keys so far are kept, so the sample spreads over the whole
run without knowing its length), with their token ids and the label the running graph
gave them. When the run ends, `finish` scores the sample with the bundle's fp32 graph
and `record` writes into the run's row:

    canary_rows             rows compared (0: nothing to compare; NULL: not measured)
    canary_disagree_share   share of them whose top-1 label differs from fp32's
    canary_note             the warning, or why there are no figures

Above WARN_SHARE the run logs one line starting `warning: canary`. It costs one fp32
pass over `rows` texts at the end of the run (256 by default, about a second on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marketpulse import variants as registry
from marketpulse.inference.batching import Encoded
from marketpulse.results_schema import RUNS
from marketpulse.sql import quote_ident

DEFAULT_ROWS = 256
SEED = 0
WARN_SHARE = 0.01
REFERENCE_RAN = f"the {registry.REFERENCE} reference graph ran; nothing to compare it with"
DISABLED = "--canary-rows 0: not measured"
RAY = "not measured on --engine ray (the scored rows stay on the workers)"


@dataclass
class CanaryResult:
    rows: int | None = None
    disagree_share: float | None = None
    note: str | None = None
    warn: bool = False
    seconds: float = 0.0  # spent rescoring; not counted in the run's rows/s

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "disagree_share": self.disagree_share,
            "note": self.note,
            "warn": self.warn,
            "seconds": round(self.seconds, 3),
        }


class Canary:
    """A seeded uniform sample of a run's scored rows: token ids and the label each got."""

    def __init__(self, rows: int = DEFAULT_ROWS, seed: int = SEED):
        self.size = int(rows)
        self.rng = np.random.default_rng(seed)
        self.keys = np.empty(0)
        self.ids: list[np.ndarray] = []
        self.labels: list[int] = []

    def add(self, window) -> None:
        """Offer one inferred window's scored rows (runtime.windows.Window) to the sample."""
        n = len(window.valid)
        if not self.size or not n:
            return
        keys = self.rng.random(n)  # one draw per row whatever happens, so runs repeat
        rows = np.flatnonzero(~window.failed)
        keys = keys[rows]
        if len(keys) > self.size:  # only the window's smallest keys can enter
            first = np.argpartition(keys, self.size)[: self.size]
            rows, keys = rows[first], keys[first]
        merged = np.concatenate([self.keys, keys])
        keep = np.argsort(merged, kind="stable")[: self.size]
        held, enc = len(self.keys), window.encoded
        ids, labels = [], []
        for j in keep:
            if j < held:
                ids.append(self.ids[j])
                labels.append(self.labels[j])
                continue
            row = rows[j - held]
            text = window.distinct[row]
            start = enc.starts[text]
            ids.append(enc.flat[start : start + enc.lengths[text]].copy())
            labels.append(int(window.probs[row].argmax()))
        self.keys, self.ids, self.labels = merged[keep], ids, labels

    def finish(self, reference, batch_tokens: int | None = None) -> CanaryResult:
        """Score the sample with `reference` (a Predictor on the fp32 graph) and compare."""
        if not self.ids:
            return CanaryResult(rows=0, note="no rows scored in this run")
        lengths = np.array([len(i) for i in self.ids], dtype=np.int64)
        encoded = Encoded(np.concatenate(self.ids), lengths, np.zeros(len(lengths), bool))
        probs, failed = reference.run_batches(encoded, batch_tokens)[:2]
        ok = ~failed
        rows = int(ok.sum())
        if not rows:
            return CanaryResult(rows=0, note="the fp32 graph failed on every sampled row")
        differ = probs.argmax(axis=1)[ok] != np.array(self.labels)[ok]
        share = float(differ.mean())
        result = CanaryResult(rows=rows, disagree_share=share)
        if share > WARN_SHARE:
            result.warn = True
            result.note = (
                f"top-1 label differs from the {registry.REFERENCE} graph's on {share:.1%} of "
                f"{rows} sampled rows (above {WARN_SHARE:.0%})"
            )
        return result


def record(con, run_id: str, result: CanaryResult) -> None:
    con.execute(
        f"UPDATE {quote_ident(RUNS)} SET canary_rows = ?, canary_disagree_share = ?, "
        "canary_note = ? WHERE run_id = ?",
        [result.rows, result.disagree_share, result.note, run_id],
    )


def message(result: CanaryResult, variant: str) -> str | None:
    """The stderr line for a run, None when there is nothing to say."""
    if not result.warn:
        return None
    return (
        f"warning: canary: the {variant} graph's {result.note}; score with --variant "
        f"{registry.REFERENCE}, or re-export the bundle and check its gate figures"
    )
