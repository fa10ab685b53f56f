"""marketpulse runtime stage: score DuckDB tables with an exported bundle.

`score(ScoreConfig) -> RunStats` is the entry point; `Predictor` runs a bundle on
texts. Importing this package loads numpy at most: onnxruntime, tokenizers and duckdb
load when first used, and torch, transformers and optimum never do.
"""

from __future__ import annotations

__all__ = ["Predictor", "RunStats", "ScoreConfig", "score"]


def __getattr__(name: str):
    if name == "Predictor":
        from marketpulse.inference.predictor import Predictor

        return Predictor
    if name in ("RunStats", "ScoreConfig", "score"):
        from marketpulse.runtime import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module 'marketpulse.runtime' has no attribute {name!r}")
