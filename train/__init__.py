"""marketpulse train stage: fine-tune a BERT-family classifier on labeled DuckDB rows.

`run(TrainConfig) -> Path` writes an HF checkpoint, metrics.json and test_split.parquet.
Importing this package stays light; torch and transformers load inside `run`.
"""

from __future__ import annotations

from pathlib import Path

from marketpulse.train.config import TrainConfig
from marketpulse.train.data import DataSource

__all__ = ["DataSource", "TrainConfig", "run"]


def run(cfg: TrainConfig) -> Path:
    """Fine-tune per `cfg`; return the output (checkpoint) directory."""
    from marketpulse.train.trainer import run as _run

    return _run(cfg)
