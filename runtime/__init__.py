"""marketpulse runtime stage: score DuckDB tables with an exported bundle.

`score(ScoreConfig) -> RunStats` is the entry point; `Predictor` runs a bundle on
texts. The modules, one job each:

    runs.py          ScoreConfig, RunStats; input checks, the `runs` row, chunk commits
    database.py      the file held only per session: read-only reads, brief commits, run lock
    source.py        check the source table, read pending rows
    windows.py       a window of rows -> tokenized -> inferred -> scores rows
    local_engine.py  score(): reader / inference / writer threads on this machine
    ray_engine.py    score_with_ray(): the same windows on a Ray Data actor pool
    ray_cluster.py   joining a cluster, node checks, the progress watchdog
    drift.py         drift per run: PSI against the bundle's reference profile
    explanations.py  `marketpulse explain` over a table: the explanations table
    results.py       create and write the scores, models and runs tables
    progress.py      rows done, rows/s and ETA on stderr
    where.py         the --where filter, checked and compiled

Importing this package loads numpy at most: onnxruntime, tokenizers and duckdb
load when first used, and torch, transformers and optimum never do.
"""

from __future__ import annotations

__all__ = ["Predictor", "RunStats", "ScoreConfig", "score"]


def __getattr__(name: str):
    if name == "Predictor":
        from marketpulse.inference.predictor import Predictor

        return Predictor
    if name in ("RunStats", "ScoreConfig"):
        from marketpulse.runtime import runs

        return getattr(runs, name)
    if name == "score":
        from marketpulse.runtime.local_engine import score

        return score
    raise AttributeError(f"module 'marketpulse.runtime' has no attribute {name!r}")
