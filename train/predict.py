"""Order-preserving batch prediction with a PyTorch checkpoint.

Why this exists: with `group_by_length=True`, transformers' Trainer (4.57) also
feeds evaluate/predict through a shuffled, length-grouped sampler, so its
predictions no longer line up with the labels. Here the row order is explicit:
texts are batched by length for speed, and every logit row is written back to
the index of the text it came from. `predict_logits(...)[i]` belongs to `texts[i]`.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from marketpulse.checkpoint import Checkpoint


def resolve_device(requested: str = "auto", precision: str = "auto") -> tuple[str, str, str]:
    """Return (device, precision, reason) for training or PyTorch inference.

    `precision` "auto" picks bf16 (fp16 on older GPUs) on CUDA, bf16 autocast on a CPU with
    native bf16 (AVX512-BF16 or AMX: 1.5x the fp32 training rate on 2 cores here, see
    README), else fp32. "fp32" and "bf16" force one; bf16 on a CPU without it is refused.
    """
    import torch

    from marketpulse import cpu
    from marketpulse.errors import MarketpulseError

    if requested == "cuda" and not torch.cuda.is_available():
        raise MarketpulseError(
            "--device cuda was requested but CUDA is not available; pass --device cpu"
        )
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        if precision == "fp32":
            return "cuda", "fp32", f"CUDA device {name}, fp32 requested"
        if torch.cuda.is_bf16_supported():
            return "cuda", "bf16", f"CUDA device {name} supports bf16"
        if precision == "bf16":
            raise MarketpulseError(f"CUDA device {name} has no bf16; pass --precision auto")
        return "cuda", "fp16", f"CUDA device {name} has no bf16, using fp16 mixed precision"
    where = "--device cpu requested" if requested == "cpu" else "no CUDA device found"
    if precision == "fp32":
        return "cpu", "fp32", f"{where}, fp32 requested"
    if cpu.native_bf16():
        return "cpu", "bf16", f"{where}; the CPU has native bf16, using bf16 autocast"
    if precision == "bf16":
        raise MarketpulseError(
            "--precision bf16 needs a CPU with AVX512-BF16 or AMX (this one has neither); "
            "pass --precision auto"
        )
    return "cpu", "fp32", f"{where}; the CPU has no native bf16"


def load_model(checkpoint: Checkpoint, device: str = "cpu"):
    """Load (model, tokenizer) of a checkpoint; its labels are `checkpoint.labels`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint.path)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
    return model.to(device).eval(), tokenizer


def predict_logits(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_length: int = 128,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Logits (n, n_labels) as float32, row i for texts[i]."""
    import torch

    n_labels = model.config.num_labels
    out = np.zeros((len(texts), n_labels), dtype=np.float32)
    if not texts:
        return out
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    # Longest first: padding waste stays small and a too-large batch fails early.
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]), reverse=True)
    pad_id = tokenizer.pad_token_id or 0
    started, done = time.perf_counter(), 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = len(encoded[idx[0]])
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = encoded[i]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = logits.float().cpu().numpy()
            done += len(idx)
            if progress:
                rate = done / max(time.perf_counter() - started, 1e-9)
                print(
                    f"\rpredicted {done}/{len(texts)} rows ({rate:.0f} rows/s)",
                    end="",
                    file=sys.stderr,
                )
    if progress:
        print(file=sys.stderr)
    return out
