"""Shared helpers for the runtime tests.

`spread_bundle(tiny_checkpoint, tmp_path_factory)`: the tiny checkpoint with its weights redrawn at a large scale, exported
by `marketpulse.export.run`. The stock tiny model has near-tied logits, so every text
gets almost the same probabilities; here different texts get clearly different ones,
which lets a test prove each result landed on the right id after length sorting.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from marketpulse.bundle import MANIFEST, load_bundle
from marketpulse.runtime import autovariant

_CACHE: dict = {}


def spread_bundle(tiny_checkpoint, tmp_path_factory):
    """Built once per test session; call it from a fixture."""
    if tiny_checkpoint in _CACHE:
        return _CACHE[tiny_checkpoint]
    torch = pytest.importorskip("torch")
    pytest.importorskip("optimum.onnxruntime")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from marketpulse.export import ExportConfig, run

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" not in name:
                param.normal_(0.0, 0.4)
    checkpoint = tmp_path_factory.mktemp("spread") / "checkpoint"
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(checkpoint)
    out = checkpoint.parent / "bundle"
    _CACHE[tiny_checkpoint] = run(
        ExportConfig(
            model=checkpoint,
            out=out,
            variants=("fp32", "int8"),
            allow_accuracy_drop=True,
            max_length=48,
        )
    )
    return _CACHE[tiny_checkpoint]


# A one-wordpiece word that no `make_source` text holds; see `poison_onnx`.
MARKER = "zebra"


def poison_onnx(monkeypatch, bundle) -> dict:
    """Make ONNX Runtime raise for every batch that holds MARKER's token; count those calls.

    Wraps `InferenceSession.run` itself, so the Predictor's retry and everything after it
    see a real session error.
    """
    import numpy as np
    import onnxruntime as ort

    from marketpulse.inference.predictor import Predictor

    marker_ids = Predictor(bundle, variant="fp32").encoder.encode([MARKER]).ids[0][1:-1]
    assert len(marker_ids) == 1  # one wordpiece, so no other text can hold it by accident
    real_run = ort.InferenceSession.run
    calls = {"poisoned": 0}

    def run(self, output_names, feeds, *args, **kwargs):
        if np.isin(feeds["input_ids"], marker_ids).any():
            calls["poisoned"] += 1
            raise RuntimeError("injected ONNX Runtime failure")
        return real_run(self, output_names, feeds, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    return calls


def make_source(db: Path, n: int, table: str = "posts", long_every: int = 0) -> list:
    """A posts(id BIGINT, text VARCHAR, lang VARCHAR) table; every 97th text NULL, 89th blank."""
    texts = []
    for i in range(n):
        if i % 97 == 5:
            text = None
        elif i % 89 == 7:
            text = "   " if i % 2 else ""
        elif long_every and i % long_every == 3:
            text = f"row {i} " + "markets tumble on rate fears " * 40
        else:
            text = f"row {i}: {'shares rally ' * (i % 9)}{['AAPL', 'TSLA', 'oil'][i % 3]} guidance"
        texts.append(text)
    rows = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "text": pa.array(texts, pa.string()),
            "lang": pa.array(["en" if i % 2 == 0 else "de" for i in range(n)]),
        }
    )
    con = duckdb.connect(str(db))
    con.register("rows", rows)
    con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM rows")
    con.close()
    return texts


@pytest.mark.parametrize(
    ("run_limit", "during_checks"),
    [("512MB", "128MB"), ("64MB", "64MB"), ("1GB", "128MB"), ("100MiB", "100MiB")],
)
def test_checks_run_under_the_lower_memory_cap_and_restore_the_run_limit(
    tmp_path, run_limit, during_checks
):
    from marketpulse.runtime.source import low_memory

    def limit(con):
        return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    def set_and_read(con, size):
        con.execute(f"SET memory_limit = '{size}'")
        return limit(con)

    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    expected = set_and_read(con, during_checks)  # DuckDB's own spelling of the cap
    before = set_and_read(con, run_limit)
    with low_memory(con, run_limit):
        assert limit(con) == expected
    assert limit(con) == before


def with_gate(bundle, tmp_path, int8_passed: bool, rescoring: bool = True):
    """A copy of the bundle whose manifest records int8's gate verdict; without
    `rescoring`, int8 runs alone, as in bundles exported before the rescore margin."""
    out = tmp_path / f"bundle-{int8_passed}-{rescoring}"
    shutil.copytree(bundle.path, out)
    manifest = json.loads((out / MANIFEST).read_text())
    if not rescoring:
        manifest["variants"]["int8"].pop("rescore_margin", None)
    manifest["checks"]["gate"]["variants"] = {
        "fp32": {"passed": True, "test_agreement": 1.0, "check_agreement": 1.0, "check_rows": 26},
        "int8": {
            "passed": int8_passed,
            "test_agreement": 0.95,
            "check_agreement": 0.9231,
            "check_rows": 26,
        },
    }
    (out / MANIFEST).write_text(json.dumps(manifest))
    return load_bundle(out)


def forge_timings(bundle, cache, int8_speedup: float):
    """A cache file as auto writes it, with int8 `int8_speedup` times fp32."""
    key = autovariant.machine_key(bundle)
    rates = {"fp32": 100.0, "int8": 100.0 * int8_speedup}
    assert autovariant.write_cache(autovariant.cache_path(cache, key), key, rates, 1.0) is None
