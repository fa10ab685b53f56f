"""Proof that the exported graphs still are the trained model.

Two checks, both against the PyTorch checkpoint on identical token ids:

- parity: the fp32 graph's logits vs PyTorch's, max absolute difference on real texts
  (the checkpoint's test split, or a built-in list of market sentences). Must be tiny:
  anything above the tolerance means the export itself is wrong.
- accuracy: for every variant that can run here, top-1 agreement with PyTorch and
  macro-F1 on the held-out test split train recorded (`marketpulse.checkpoint`). Quantization is allowed
  to move logits; the gate is on decisions.

ONNX graphs run through `marketpulse.inference.predictor.Predictor`, the same code that
scores tables, so what is checked here is what production runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marketpulse.checkpoint import TEST_SPLIT, Checkpoint, read_test_split

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
        return CheckTexts(list(MARKET_SENTENCES), None, "built-in market sentences")
    texts, labels = read_test_split(checkpoint)
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
    return CheckTexts(texts, labels, f"{TEST_SPLIT} ({len(texts)} rows)")


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
    result = {
        "rows": len(onnx_pred),
        "agreement": float((onnx_pred == torch_pred).mean()),
        "max_abs_logit_diff": float(np.abs(onnx_logits - torch_logits).max()),
    }
    if truth is not None:
        predicted = [labels[i] for i in onnx_pred]
        result["macro_f1"] = classification_metrics(truth, predicted, labels)["macro_f1"]
    return result
