"""Training rows/s on this machine: fp32 against bf16 autocast, links as one token (and
torch.compile), side by side.

Each mode fine-tunes a fresh copy of the base model for the same steps on the same real
texts (the twitter set in the shared data folder), batches of --batch-size padded to their
longest row, AdamW; the first two steps are warm-up and not timed. Modes run one after
another in this process and the whole set is repeated --repeats times, interleaved, so a
noisy neighbour shows as spread rather than as a winner. The CPU (name, ISA, native bf16)
is printed with the figures. `train --precision auto` picks bf16 where it is native.
Mode `urls` is fp32 with the tokenizer reading web addresses as one token, as `train`
does unless `--keep-urls` (marketpulse/urls.py); the other modes tokenize text as written.

Example: python -m marketpulse.tools.train_speed --modes fp32,bf16 --steps 12
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import click

from marketpulse import cpu
from marketpulse.tools.options import data_option
from marketpulse.urls import set_url_normalizer

MODES = ("fp32", "bf16", "urls", "compile")
WARMUP_STEPS = 2


def load_texts(data: Path, rows: int) -> list[str]:
    path = data / "twitter_financial_news" / "train.csv"
    if not path.is_file():
        raise click.ClickException(f"{path} not found; pass --data with the shared data folder")
    with path.open(newline="") as f:
        return [row["text"] for _, row in zip(range(rows), csv.DictReader(f), strict=False)]


def steps_per_second(mode: str, texts: list[str], batch_size: int, steps: int) -> float:
    """Rows/s of `steps` optimizer steps after the warm-up, for one precision mode."""
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from marketpulse.train.basemodel import resolve_base_model

    base = resolve_base_model(None)
    tokenizer = AutoTokenizer.from_pretrained(base)
    set_url_normalizer(tokenizer, mode == "urls")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=3)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if mode == "compile":
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    generator = torch.Generator().manual_seed(0)
    started = None
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            started = time.perf_counter()
        batch = texts[(step * batch_size) % len(texts) :][:batch_size]
        inputs = tokenizer(
            batch, padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        labels = torch.randint(0, 3, (len(batch),), generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * batch_size / (time.perf_counter() - started)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@data_option("Shared data folder holding twitter_financial_news/train.csv.")
@click.option(
    "--modes", default="fp32,bf16,urls", show_default=True, help=f"Any of {','.join(MODES)}."
)
@click.option("--steps", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(min=1))
def main(data: Path, modes: str, steps: int, batch_size: int, repeats: int) -> None:
    """Print training rows/s per precision mode on this CPU, and the ratio to fp32."""
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if unknown := sorted(set(chosen) - set(MODES)):
        raise click.BadParameter(f"unknown mode(s) {', '.join(unknown)}; use {', '.join(MODES)}")
    texts = load_texts(data, batch_size * (WARMUP_STEPS + steps))
    click.echo(f"machine: {cpu.describe()}; load {os.getloadavg()[0]:.2f}")
    rates: dict[str, list[float]] = {m: [] for m in chosen}
    for _ in range(repeats):
        for mode in chosen:
            rates[mode].append(steps_per_second(mode, texts, batch_size, steps))
    base = max(rates["fp32"]) if "fp32" in rates else None
    for mode, runs in rates.items():
        ratio = f"  {max(runs) / base:.2f}x fp32" if base and mode != "fp32" else ""
        click.echo(f"{mode:8s} {' / '.join(f'{r:.1f}' for r in runs)} rows/s{ratio}")


if __name__ == "__main__":
    main()
