"""Proof that the exported graphs still are the trained model.

Two checks, both against the PyTorch checkpoint on identical token ids:

- parity: the fp32 graph's logits vs PyTorch's, max absolute difference on real texts
  (the checkpoint's test split, or a built-in list of market sentences). Must be tiny:
  anything above the tolerance means the export itself is wrong.
- accuracy: for every variant that can run here, top-1 agreement with PyTorch and
  macro-F1 on the held-out test split train recorded (`marketpulse.checkpoint`). Quantization is allowed
  to move logits; the gate is on decisions.
- agreement on check texts (`--check-input` / `--check-db`): unlabeled text like what will
  be scored. The test split is in-domain; a quantized graph that agrees 99% there can
  still change more labels on the text production scores, so both are gated.

ONNX graphs run through `marketpulse.inference.predictor.Predictor`, the same code that
scores tables, so what is checked here is what production runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from marketpulse.checkpoint import TEST_SPLIT, Checkpoint, read_test_split
from marketpulse.errors import MarketpulseError
from marketpulse.export.log import log
from marketpulse.sources import Flags, first_line, open_source
from marketpulse.sql import quote_ident
from marketpulse.text import blank_sql

# Default sample of check texts: at 99% agreement, 2000 rows put the estimate within
# +-0.44 points (95% confidence).
CHECK_ROWS = 2000
# Fewer gated check texts than this and export warns that the gate on them is imprecise:
# even a graph that agrees on all 200 has a 95% interval reaching down to 98.1%, so the
# gate cannot tell it from one that changes 2% of the labels.
PRECISE_CHECK_ROWS = 200
# export takes no query: its errors suggest a view passed as --check-table instead
_FLAGS = Flags(db="--check-db", table="--check-table", query=None, input="--check-input")

# Used for parity (and agreement) when a checkpoint has no test split, e.g. one that
# was not made by `marketpulse train`. Real-looking market text, mixed lengths.
MARKET_SENTENCES = [
    "Apple shares jump 5% after earnings beat Wall Street estimates",
    "$TSLA falls as Musk sells another $3.6 billion of Tesla stock",
    "Fed holds rates steady, signals two cuts later this year",
    "Oil prices slide on weak Chinese demand and rising US inventories",
    "Bank of America downgrades Intel to underperform, cuts price target to $20",
    "Nvidia market cap tops $3 trillion for the first time",
    "Stocks making the biggest moves midday: GME, AMC, BBBY",
    "Boeing halts 737 Max deliveries after new quality issue found",
    "Treasury yields rise as jobs report comes in hotter than expected",
    "Pfizer to cut 500 jobs as Covid product sales plunge",
    "Amazon announces $10 billion buyback program",
    "Gold steady near record high as investors await inflation data",
    "S&P 500 closes flat in quiet pre-holiday trading",
    "Netflix subscriber growth slows, stock drops 9% after hours",
    "Microsoft to acquire gaming company for $68.7 billion in all-cash deal",
    "Crude futures rally after OPEC+ agrees to extend output cuts",
    "Retail sales unexpectedly fall in March, raising recession fears",
    "JPMorgan raises dividend after passing Fed stress test",
    "Evergrande ordered to liquidate by Hong Kong court",
    "Bitcoin slips below $60,000 as ETF outflows mount",
    "Walmart beats on revenue, raises full-year guidance",
    "European stocks open lower; mining shares weigh",
    "Ford recalls 1.9 million Explorer SUVs over trim issue",
    "Coinbase shares surge after SEC drops lawsuit",
    "What to watch in the markets on Thursday",
    "Analyst: the company's margin outlook remains uncertain amid cost pressures and a "
    "softer demand environment in its largest segment, though management expects a "
    "gradual recovery in the second half of the fiscal year.",
]


@dataclass(frozen=True)
class CheckTexts:
    """Texts to check on; `labels` is None when there is no labeled test split."""

    texts: list[str]
    labels: list[str] | None
    source: str


def load_check_texts(checkpoint: Checkpoint, limit: int | None) -> CheckTexts:
    """The checkpoint's held-out test split, else the built-in market sentences."""
    if checkpoint.test_split_path is None:
        if checkpoint.trained_here:  # train wrote one: it was deleted or never copied
            log(
                f"warning: {checkpoint.path} was written by `marketpulse train` but its "
                f"{TEST_SPLIT} is missing, so the graphs are checked on "
                f"{len(MARKET_SENTENCES)} built-in sentences only; copy the file back, or "
                "pass --check-input/--check-table with texts like those to be scored"
            )
        return CheckTexts(list(MARKET_SENTENCES), None, "built-in market sentences")
    texts, labels = read_test_split(checkpoint)
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
    return CheckTexts(texts, labels, f"{TEST_SPLIT} ({len(texts)} rows)")


@dataclass(frozen=True)
class CheckSource:
    """Unlabeled texts like those that will be scored: a CSV/TSV/Parquet file, or a table
    (or view) in a DuckDB file. `rows` caps the sample (see `read_check_sample`)."""

    input: Path | None = None
    db: Path | None = None
    table: str | None = None
    text_col: str = "text"
    rows: int = CHECK_ROWS

    def __post_init__(self):
        if (self.input is None) == (self.db is None and self.table is None):
            raise MarketpulseError(
                "pass either --check-input FILE or --check-db DB --check-table T for check texts"
            )
        if self.input is None and (self.db is None or self.table is None):
            flag = "--check-table" if self.table is None else "--check-db"
            raise MarketpulseError(f"--check-db and --check-table go together; pass {flag} too")
        if self.rows < 1:
            raise MarketpulseError(f"--check-rows {self.rows} is below 1; pass a positive count")

    def describe(self) -> str:
        where = f"file {self.input}" if self.input else f"table {self.table} in {self.db}"
        return f"{where}, column {self.text_col}"


@dataclass(frozen=True)
class CheckSample:
    """The sampled check texts and where they came from (recorded in the manifest)."""

    texts: list[str]
    source: str
    rows_read: int
    skipped: dict[str, int]
    calibration: list[str] = field(default_factory=list)  # further sampled rows, not gated

    @property
    def fingerprint(self) -> str:
        """sha256 of the sampled texts in sample order: the same data gives the same one."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(json.dumps(text, ensure_ascii=False).encode())
            digest.update(b"\n")
        return "sha256:" + digest.hexdigest()

    def gating_all(self, rows: int) -> CheckSample:
        """This sample with its calibration rows gated too (up to `rows` in all), for when
        int8 calibrates elsewhere. Still the first rows by md5: calibration follows texts."""
        return replace(self, texts=(self.texts + self.calibration)[:rows], calibration=[])

    def provenance(self) -> dict:
        return {
            "source": self.source,
            "rows": len(self.texts),
            "rows_read": self.rows_read,
            "skipped": self.skipped,
            "sample": "non-blank texts ordered by md5(text), first rows",
            "fingerprint": self.fingerprint,
            "calibration_rows": len(self.calibration),
        }


def read_check_sample(source: CheckSource, calibration_rows: int = 0) -> CheckSample:
    """Up to `source.rows` non-blank texts, the same ones whatever order DuckDB scans in,
    and up to `calibration_rows` more for calibrating int8, never among the gated ones.

    Ordering by md5(text) is a hash sample: every text is equally likely to be picked,
    duplicates in proportion, and a rerun on the same data picks the same rows. When the
    source holds fewer than both together, the calibration takes at most half of it and
    the gated texts never more than `source.rows`.
    """
    import duckdb

    column = quote_ident(source.text_col)
    text = f"CAST({column} AS VARCHAR)"
    try:
        with open_source(
            db=source.db,
            table=source.table,
            input=source.input,
            require={"--check-text-col": source.text_col},
            flags=_FLAGS,
            text_flag="--check-text-col",
        ) as relation:
            rows_read, nulls, blanks = relation.con.execute(
                f"SELECT count(*), count(*) - count({column}), "
                f"count(*) FILTER (WHERE {blank_sql(text)}) FROM {relation.name}"
            ).fetchone()
            texts = [
                row[0]
                for row in relation.con.execute(
                    f"SELECT t FROM (SELECT {text} AS t FROM {relation.name}) "
                    f"WHERE NOT {blank_sql('t')} ORDER BY md5(t), t LIMIT ?",
                    [source.rows + calibration_rows],
                ).fetchall()
            ]
    except duckdb.Error as exc:
        raise MarketpulseError(
            f"cannot read check texts from {source.describe()}: {first_line(exc)}; "
            "check the file or table"
        ) from exc
    if not texts:
        raise MarketpulseError(
            f"no non-blank texts in {source.describe()} ({rows_read} rows read); "
            "pass --check-text-col with the column that holds the text"
        )
    # at most source.rows gated; a source too small for both keeps half for calibration
    gated_n = min(source.rows, len(texts) - min(calibration_rows, len(texts) // 2))
    gated, calibration = texts[:gated_n], texts[gated_n : gated_n + calibration_rows]
    skipped = {"null_text": nulls, "empty_text": blanks}
    return CheckSample(gated, source.describe(), rows_read, skipped, calibration)


class TorchReference:
    """The PyTorch checkpoint, fed exactly the token ids the runtime produces."""

    def __init__(self, checkpoint: Path):
        import torch
        from transformers import AutoModelForSequenceClassification

        self._torch = torch
        self.model = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, local_files_only=True, dtype=torch.float32
        ).eval()

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(attention_mask),
                token_type_ids=torch.zeros_like(torch.from_numpy(input_ids)),
            )
        return out.logits.float().numpy()


def run_all(
    predictors: dict, reference: TorchReference, texts: list[str], batch_rows: int = 32
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Logits of every predictor and of PyTorch, all from the same padded batches."""
    from marketpulse.inference.batching import pad

    first = next(iter(predictors.values()))
    encoded = first.encoder.encode(texts)
    order = np.argsort(encoded.lengths, kind="stable")  # similar lengths -> little padding
    shape = (len(texts), len(first.labels))
    onnx_out = {name: np.empty(shape, dtype=np.float32) for name in predictors}
    torch_out = np.empty(shape, dtype=np.float32)
    for start in range(0, len(texts), batch_rows):
        idx = order[start : start + batch_rows]
        ids, mask = pad([encoded.ids[i] for i in idx], first.encoder.pad_id)
        torch_out[idx] = reference.logits(ids, mask)
        for name, predictor in predictors.items():
            onnx_out[name][idx] = predictor.run(ids, mask)
    return onnx_out, torch_out


def agreement_interval(agreed: int, rows: int) -> list[float]:
    """95% Wilson score interval of an agreement rate measured on `rows` texts.

    On the 954 rows of a typical test split one standard error is about 0.3 points, so
    an int8 graph measured at 98.9% may well agree on 99% of the text it will score: the
    interval says how far the gate's point estimate can be trusted.
    """
    from scipy.stats import binomtest

    ci = binomtest(agreed, rows).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def imprecise_gate_warning(rows: int) -> str | None:
    """A warning line when `rows` check texts are too few for the gate to mean much."""
    if rows >= PRECISE_CHECK_ROWS:
        return None
    low, _ = agreement_interval(rows, rows)
    return (
        f"warning: only {rows} check texts: the gate on them can hardly tell 99% agreement "
        f"apart, as even a graph that agrees with PyTorch on all {rows} has a 95% interval "
        f"of {low:.2%}-100.00%; pass --check-input/--check-table with at least "
        f"{PRECISE_CHECK_ROWS} usable texts (and --check-rows no lower) to narrow it"
    )


def compare(
    onnx_logits: np.ndarray,
    torch_logits: np.ndarray,
    labels: list[str],
    truth: list[str] | None,
) -> dict:
    """Agreement with PyTorch, max logit difference, and macro-F1 when labels are known."""
    from marketpulse.metrics import classification_metrics

    onnx_pred = onnx_logits.argmax(axis=1)
    torch_pred = torch_logits.argmax(axis=1)
    agreed = int((onnx_pred == torch_pred).sum())
    result = {
        "rows": len(onnx_pred),
        "agreement": agreed / len(onnx_pred),
        "agreement_interval": agreement_interval(agreed, len(onnx_pred)),
        "max_abs_logit_diff": float(np.abs(onnx_logits - torch_logits).max()),
    }
    if truth is not None:
        predicted = [labels[i] for i in onnx_pred]
        result["macro_f1"] = classification_metrics(truth, predicted, labels)["macro_f1"]
    return result
