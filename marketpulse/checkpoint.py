"""The training checkpoint: the one contract between train (writes) and export/evaluate (read).

`marketpulse train --out DIR` leaves:

    DIR/
      config.json             Hugging Face model config; `id2label` names every logit
      model.safetensors       the weights (any weights file transformers can load)
      tokenizer.json, ...     the tokenizer, saved with `save_pretrained`
      test_split.parquet      held-out rows: text VARCHAR, label VARCHAR (label name)
      validation_split.parquet  the rows that picked the epoch, same columns: export
                              calibrates int8 on them, so the gate's test rows stay unseen
      metrics.json            the run's record, with fixed top-level keys (below)

Where each field lives, so no reader ever searches for it:

    labels        config.json `id2label`, in logit order ("0", "1", ...); metrics.json
                  `labels` repeats them and must agree
    max_length    metrics.json `max_length` (token limit trained with)
    base_model    metrics.json `base_model` (directory or name it was fine-tuned from)
    format        metrics.json `format` (CHECKPOINT_FORMAT)
    test split    the file TEST_SPLIT in DIR, nothing else names it
    validation    the file VALIDATION_SPLIT in DIR (checkpoints from before it have none)
    metrics       the rest of metrics.json: `test` scores, `validation`, `rows`, `data`,
                  `hyperparameters`, `device`, `versions`, timings

A plain Hugging Face classifier directory (config.json with label names, no
metrics.json) is a checkpoint too: max_length is then DEFAULT_MAX_LENGTH, base_model
is unknown and there is no test split. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marketpulse.errors import MarketpulseError, first_line

CHECKPOINT_FORMAT = 1
CONFIG = "config.json"
METRICS = "metrics.json"
TEST_SPLIT = "test_split.parquet"
VALIDATION_SPLIT = "validation_split.parquet"
WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
DEFAULT_MAX_LENGTH = 128
# metrics.json keys the contract fixes; train must write them, readers rely on them.
REQUIRED_METRICS = ("format", "labels", "max_length", "base_model")

_RETRAIN = "re-run `marketpulse train` with this --out"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory whose config and metrics have been read and cross-checked."""

    path: Path
    labels: tuple[str, ...]
    max_length: int
    base_model: str | None
    metrics: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def trained_here(self) -> bool:
        """True when `marketpulse train` wrote it (it has a metrics.json)."""
        return self.metrics is not None

    @property
    def test_split_path(self) -> Path | None:
        """The held-out test rows, or None when the directory has none."""
        path = self.path / TEST_SPLIT
        return path if path.is_file() else None

    @property
    def validation_split_path(self) -> Path | None:
        """The validation rows, or None when the directory has none."""
        path = self.path / VALIDATION_SPLIT
        return path if path.is_file() else None


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MarketpulseError(f"{path} is unreadable ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise MarketpulseError(f"{path} is not a JSON object; {fix}")
    return data


def are_placeholder_labels(labels: list[str] | tuple[str, ...]) -> bool:
    """True when every label starts with `LABEL_`, as transformers names the logits of a
    config given no names (`LABEL_0`, `LABEL_1`; for two classes it may leave `id2label` out
    of config.json altogether): a checkpoint cannot tell such labels from no names, so
    `load_checkpoint` refuses them and train refuses them before training."""
    return bool(labels) and all(label.startswith("LABEL_") for label in labels)


def _read_labels(config: dict[str, Any], config_path: Path) -> tuple[str, ...]:
    """Label names in logit order from a Hugging Face config's `id2label`."""
    id2label = config.get("id2label") or {}
    try:
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    except (TypeError, ValueError):
        labels = ()
    if (
        len(labels) < 2
        or sorted(int(k) for k in id2label) != list(range(len(labels)))
        or are_placeholder_labels(labels)
    ):
        raise MarketpulseError(
            f"{config_path} has no label names (id2label: {id2label}); train with "
            "`marketpulse train`, which records them"
        )
    return labels


def _check_weights(path: Path) -> None:
    """A safetensors file that is cut short or not one is refused here in one line (its
    header is read, not its tensors), not as a traceback from deep inside transformers."""
    weights = path / WEIGHTS[0]
    if not weights.is_file() or not weights.name.endswith(".safetensors"):
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="np"):
            pass
    except Exception as exc:  # SafetensorError, OSError: unreadable either way
        raise MarketpulseError(
            f"{weights} is unreadable ({first_line(exc)}); {_RETRAIN}, or restore the "
            "checkpoint from a copy"
        ) from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory; raise MarketpulseError saying the fix when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise MarketpulseError(
            f"checkpoint directory {path} not found; pass --model with a directory "
            "written by `marketpulse train`"
        )
    config_path = path / CONFIG
    if not config_path.is_file():
        raise MarketpulseError(
            f"{path} is not a model checkpoint (no {CONFIG}); pass --model with a "
            "directory written by `marketpulse train`"
        )
    labels = _read_labels(_read_json(config_path, _RETRAIN), config_path)
    if not any((path / name).is_file() for name in WEIGHTS):
        raise MarketpulseError(
            f"{path} has no model weights ({WEIGHTS[0]}); {_RETRAIN}, or save the model "
            "there with save_pretrained(DIR)"
        )
    _check_weights(path)
    metrics_path = path / METRICS
    if not metrics_path.is_file():
        return Checkpoint(path, labels, DEFAULT_MAX_LENGTH, None, None)

    metrics = _read_json(metrics_path, _RETRAIN)
    missing = [key for key in REQUIRED_METRICS if key not in metrics]
    if missing:
        raise MarketpulseError(
            f"{metrics_path} lacks {', '.join(missing)}; it was not written by "
            f"`marketpulse train`: {_RETRAIN}, or delete it to use defaults"
        )
    if metrics["format"] != CHECKPOINT_FORMAT:
        raise MarketpulseError(
            f"{metrics_path} has checkpoint format {metrics['format']!r}, this marketpulse "
            f"reads format {CHECKPOINT_FORMAT}; {_RETRAIN}"
        )
    if tuple(metrics["labels"]) != labels:
        raise MarketpulseError(
            f"{metrics_path} labels {list(metrics['labels'])} differ from {CONFIG} "
            f"{list(labels)}, so the directory mixes two runs; {_RETRAIN} into an empty directory"
        )
    max_length = metrics["max_length"]
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise MarketpulseError(
            f"{metrics_path} max_length {max_length!r} is not a positive integer; {_RETRAIN}"
        )
    base_model = metrics["base_model"]
    return Checkpoint(
        path, labels, max_length, None if base_model is None else str(base_model), metrics
    )


def read_test_split(checkpoint: Checkpoint) -> tuple[list[str], list[str]]:
    """(texts, label names) of the held-out rows, checked against the model's labels."""
    path = checkpoint.test_split_path
    if path is None:
        raise MarketpulseError(f"{checkpoint.path} has no {TEST_SPLIT}; {_RETRAIN}")
    return _read_split(checkpoint, path)


def read_validation_split(checkpoint: Checkpoint) -> tuple[list[str], list[str]] | None:
    """(texts, label names) of the validation rows, or None for a checkpoint without."""
    path = checkpoint.validation_split_path
    return None if path is None else _read_split(checkpoint, path)


def _read_split(checkpoint: Checkpoint, path: Path) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise MarketpulseError(f"{path} is unreadable ({exc}); {_RETRAIN}") from exc
    missing = {"text", "label"} - set(table.column_names)
    if missing:
        raise MarketpulseError(
            f"{path} lacks columns {sorted(missing)} (has {table.column_names}); "
            "re-run `marketpulse train`, which writes text and label columns"
        )
    texts = [str(t) if t is not None else "" for t in table.column("text").to_pylist()]
    labels = [str(y) for y in table.column("label").to_pylist()]
    unknown = sorted(set(labels) - set(checkpoint.labels))
    if unknown:
        raise MarketpulseError(
            f"{path} has labels {unknown} the model does not know ({list(checkpoint.labels)}); "
            "re-run `marketpulse train` so the split and the model agree"
        )
    return texts, labels


# Writer side: what `marketpulse train` calls.


def out_in_use(out: Path) -> bool:
    """Whether an --out directory already holds files (train and adapt decide what may be
    replaced); a file there is refused."""
    if out.exists() and not out.is_dir():
        raise MarketpulseError(f"--out {out} is a file; pass a directory path")
    return out.is_dir() and any(out.iterdir())


def holds_training(out: Path) -> bool:
    """Whether `out` holds what `marketpulse train` writes: a metrics.json that reads as a
    JSON object with the contract's `format` key (train may replace only such a directory)."""
    try:
        metrics = json.loads((Path(out) / METRICS).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and "format" in metrics


def write_test_split(out: Path, texts: list[str], labels: list[str]) -> Path:
    """Write the held-out rows to OUT/TEST_SPLIT; return the file's path."""
    return _write_split(Path(out) / TEST_SPLIT, texts, labels)


def write_validation_split(out: Path, texts: list[str], labels: list[str]) -> Path:
    """Write the validation rows to OUT/VALIDATION_SPLIT; return the file's path."""
    return _write_split(Path(out) / VALIDATION_SPLIT, texts, labels)


def _write_split(path: Path, texts: list[str], labels: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": pa.array(texts, pa.string()), "label": pa.array(labels, pa.string())})
    pq.write_table(table, path)
    return path


def write_metrics(
    out: Path,
    metrics: dict[str, Any],
    *,
    labels: list[str],
    max_length: int,
    base_model: str | None,
) -> Checkpoint:
    """Write metrics.json with the contract's keys on top, then read the checkpoint back.

    Call it last, after the model, tokenizer and test split are saved: reading back
    proves the directory is a checkpoint every reader accepts. Written through a
    temporary file, so a crash never leaves half a metrics.json.
    """
    out = Path(out)
    record = {
        "format": CHECKPOINT_FORMAT,
        "labels": list(labels),
        "max_length": int(max_length),
        "base_model": base_model,
        **{k: v for k, v in metrics.items() if k not in REQUIRED_METRICS},
    }
    tmp = out / (METRICS + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out / METRICS)
    return load_checkpoint(out)
