"""marketpulse train stage: fine-tune a BERT-family classifier on labeled DuckDB rows.

`run(TrainConfig) -> Checkpoint` writes an HF checkpoint, metrics.json and
test_split.parquet, as `marketpulse.checkpoint` defines them.
Importing this package stays light; torch and transformers load inside `run`.
"""

from __future__ import annotations

from marketpulse.checkpoint import Checkpoint
from marketpulse.train.config import TrainConfig
from marketpulse.train.data import DataSource

__all__ = ["DataSource", "TrainConfig", "run"]


def run(cfg: TrainConfig) -> Checkpoint:
    """Fine-tune per `cfg`; return the checkpoint written to `cfg.out`."""
    from marketpulse.train.trainer import run as _run

    return _run(cfg)
