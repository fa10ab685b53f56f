"""`make gpu-check` (marketpulse.tools.gpucheck): its bookkeeping on CPU, and its CUDA run.

The CUDA run itself needs a GPU (marked `gpu`); on a CPU-only machine the check must
still finish, recording each run's one-line error instead of crashing.
"""

import csv
import json

import duckdb
import pytest
from click.testing import CliRunner

from marketpulse.inference.predictor import cuda_provider_available
from marketpulse.tools import gpucheck

TEXTS = ["shares soar on record profit", "stock plunges after guidance cut", "flat day"]


def _texts_csv(path, texts=TEXTS, reference=None):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text"] + (["reference_label"] if reference else []))
        for i, text in enumerate(texts):
            writer.writerow([text] + ([reference[i]] if reference else []))
    return path


def test_build_db_replicates_texts_with_unique_ids(tmp_path):
    db = tmp_path / "g.duckdb"
    gpucheck._build_db(db, ["a", "b", "c"], 7)
    with duckdb.connect(str(db)) as con:
        assert con.execute("SELECT list(text ORDER BY id) FROM ref").fetchone()[0] == list("abc")
        big = con.execute("SELECT count(*), count(DISTINCT id), list(text ORDER BY id) FROM big")
        assert big.fetchone() == (7, 7, list("abcabca"))


def test_agreement_counts_matches_and_duplicates(tmp_path):
    db = tmp_path / "g.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(
            "CREATE TABLE scores_ref AS SELECT * FROM (VALUES (0, 'x'), (1, 'y'), (1, 'y'))"
            " t(id, label)"
        )
    result = gpucheck._agreement(db, ["x", "z", "w"])
    assert result == {"rows": 3, "scored": 2, "duplicates": 1, "agreement": pytest.approx(1 / 3)}


def _run_check(bundle, tmp_path, rows: int) -> dict:
    """`python -m marketpulse.tools.gpucheck` on TEXTS; its JSON report."""
    out = tmp_path / "gpucheck.json"
    args = ["--bundle", str(bundle.path), "--texts", str(_texts_csv(tmp_path / "t.csv"))]
    args += ["--rows", str(rows), "--work", str(tmp_path / "work"), "--out", str(out)]
    result = CliRunner().invoke(gpucheck.main, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.mark.skipif(cuda_provider_available(), reason="checks the no-CUDA behaviour")
def test_without_cuda_every_run_records_a_one_line_error(tiny_bundle, tmp_path):
    report = _run_check(tiny_bundle, tmp_path, rows=20)
    assert "no CUDA provider" in report["correctness"]["error"]
    assert "\n" not in report["correctness"]["error"]
    assert report["auto"]["provider"] == "CPUExecutionProvider"  # auto falls back
    assert set(report["runs"]) == {name for name, _, _ in gpucheck.CONFIGS}
    assert all("no CUDA provider" in run["error"] for run in report["runs"].values())


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_provider_available(), reason="needs onnxruntime-gpu and a GPU")
def test_cuda_scores_every_row_once_and_agrees_with_fp32(tiny_bundle, tmp_path):
    report = _run_check(tiny_bundle, tmp_path, rows=2000)
    assert report["correctness"]["provider"] == "CUDAExecutionProvider"
    assert report["correctness"]["duplicates"] == 0
    assert report["correctness"]["agreement"] >= 0.99
    assert all(run.get("rows_scored") == 2000 for run in report["runs"].values())
