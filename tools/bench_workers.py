"""The bench's child processes: one alternative each, so each has its own peak RSS.

`python -m marketpulse.tools.bench --worker ALT ...` lands here (the bench's click command
dispatches on `--worker`). (a), (b) and (c) read the table's texts, label them the
tutorial way (a transformers `pipeline` in fp32, optimum's ORTModel on the bundle's int8
graph, PyTorch in length-sorted batches, bf16 where native), time the labelling after a warm-up batch
and write rows/s, labels and their own peak RSS to `--out` as JSON. (h) is `marketpulse
score` exactly as the CLI runs it, with `ZeroLogitsPredictor` in place of ONNX Runtime,
so its time is everything `score` does but inference. torch, transformers and optimum
are imported inside the worker that needs them.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import click

from marketpulse import cpu
from marketpulse.errors import MarketpulseError
from marketpulse.inference.predictor import Predictor

BATCH = 32


class ZeroLogitsPredictor(Predictor):
    """The bundle's Predictor with ONNX Runtime left out: zero logits of the right shape.

    Used only by the (h) worker. Batches are still planned and padded, and the softmax
    still runs, so what a run with it costs is everything `score` does but inference.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **(kwargs | {"rescore_margin": 0}))  # all rows tie: none rescored

    def run(self, input_ids, attention_mask, session=None):
        import numpy as np

        return np.zeros((len(input_ids), len(self.labels)), dtype=np.float32)


def _read_texts(db: Path, table: str) -> list[str]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    texts = [r[0] for r in con.execute(f"SELECT text FROM {table} ORDER BY id").fetchall()]
    con.close()
    return texts


def host_worker(db: Path, table: str, bundle: Path, results_db: Path, threads: int | None):
    """(h): `marketpulse score --device cpu --json` as the CLI runs it, inference stubbed."""
    from marketpulse.runtime import ScoreConfig, score

    cfg = ScoreConfig(
        db=db,
        table=table,
        id_col="id",
        text_col="text",
        bundle=bundle,
        results_db=results_db,
        device="cpu",
        threads=threads,
        # the stub's logits are zeros: nothing to time between graphs, nothing to compare
        variant="fp32",
        canary_rows=0,
    )
    stats = score(cfg, predictor_type=ZeroLogitsPredictor)
    click.echo(stats.summary(), err=True)
    click.echo(json.dumps(stats.to_dict(), indent=2))


def worker(
    alt: str, db: Path, table: str, model: Path, bundle: Path, out: Path, c_precision: str
) -> None:
    """One of (a), (b), (c); `c_precision` (bf16 or fp32) is (c)'s dtype."""
    from transformers import AutoTokenizer, pipeline

    from marketpulse.bundle import load_bundle

    texts = _read_texts(db, table)
    max_length = load_bundle(bundle).max_length
    tokenizer = AutoTokenizer.from_pretrained(model)
    if alt == "a":
        pipe = pipeline("text-classification", model=str(model), tokenizer=tokenizer, device=-1)
    elif alt == "b":
        from optimum.onnxruntime import ORTModelForSequenceClassification

        onnx_dir = out.parent / "optimum_int8"
        shutil.rmtree(onnx_dir, ignore_errors=True)
        onnx_dir.mkdir()
        shutil.copy(model / "config.json", onnx_dir / "config.json")
        os.symlink((bundle / "model.int8.onnx").resolve(), onnx_dir / "model.onnx")
        ort_model = ORTModelForSequenceClassification.from_pretrained(onnx_dir)
        pipe = pipeline("text-classification", model=ort_model, tokenizer=tokenizer, device=-1)
    elif alt != "c":
        raise MarketpulseError(f"unknown worker {alt!r}")

    def run(xs: list[str]) -> list[str]:
        preds = pipe(xs, batch_size=BATCH, truncation=True, max_length=max_length)
        return [p["label"] for p in preds]

    if alt == "c":
        run = _sorted(model, tokenizer, max_length, c_precision)
    run(texts[:BATCH])  # warm-up: first-call allocations are not throughput
    start = time.perf_counter()
    labels = run(texts)
    seconds = time.perf_counter() - start
    result = {"rows": len(texts), "seconds": seconds, "rows_per_s": len(texts) / seconds}
    if alt == "c":
        result["precision"] = c_precision
    result["labels"] = labels
    result["self_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result))


def native_precision() -> str:
    """(c)'s dtype: bf16 where the CPU multiplies it natively, else fp32, PyTorch's fastest
    on this CPU (bf16 without AVX512-BF16 or AMX is emulated and slower than fp32)."""
    return "bf16" if cpu.native_bf16() else "fp32"


def _sorted(model: Path, tokenizer, max_length: int, precision: str):
    import torch
    from transformers import AutoModelForSequenceClassification

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    net = AutoModelForSequenceClassification.from_pretrained(model).eval().to(dtype)
    id2label = net.config.id2label

    def run(texts: list[str]) -> list[str]:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
        labels: list[str] = [""] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                batch = tokenizer.pad(
                    {k: [enc[k][i] for i in idx] for k in enc.keys()}, return_tensors="pt"
                )
                pred = net(**batch).logits.float().argmax(dim=-1).tolist()
                for i, p in zip(idx, pred, strict=True):
                    labels[i] = id2label[p]
        return labels

    return run
