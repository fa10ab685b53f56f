"""`make gpu-check` (marketpulse.tools.gpucheck): its bookkeeping and verdict on CPU, and
its CUDA run.

The CUDA run itself needs a GPU (marked `gpu`); on a CPU-only machine the check must
still finish, recording each run's one-line error instead of crashing, and exit 1.
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


def _passing_report(rows: int = 2000) -> dict:
    """What a good CUDA machine reports: the shape `main` builds from its runs."""
    cuda = gpucheck.CUDA
    return {
        "rows": rows,
        "correctness": {
            "provider": cuda,
            "rows_scored": 3,
            "rows": 3,
            "scored": 3,
            "duplicates": 0,
            "agreement": 1.0,
        },
        "auto": {"provider": cuda, "rows_scored": 3},
        "runs": {name: {"provider": cuda, "rows_scored": rows} for name, _, _ in gpucheck.CONFIGS},
    }


def test_verdict_passes_a_good_report_and_names_each_miss():
    assert gpucheck.verdict(_passing_report()) == []

    report = _passing_report()
    report["correctness"].update(agreement=2 / 3, scored=2, duplicates=1)
    report["auto"] = {"provider": "CPUExecutionProvider"}
    report["runs"]["default"] = {"error": "out of memory"}
    report["runs"]["chunk-rows 16384"]["rows_scored"] = 1999
    assert gpucheck.verdict(report) == [
        "label agreement 66.67% with the reference is under --min-agreement 99.00%",
        "2 of 3 rows scored, 1 more than once: each row must be scored once",
        "--device auto chose CPUExecutionProvider, not CUDAExecutionProvider",
        "timed run 'default' failed: out of memory",
        "timed run 'chunk-rows 16384' scored 1999 of 2000 rows",
    ]


def test_verdict_threshold_is_the_flag_and_agreement_needs_a_reference():
    report = _passing_report()
    report["correctness"]["agreement"] = 0.995
    assert gpucheck.verdict(report, min_agreement=0.99) == []
    assert gpucheck.verdict(report, min_agreement=1.0) == [
        "label agreement 99.50% with the reference is under --min-agreement 100.00%"
    ]
    for key in ("agreement", "scored", "rows", "duplicates"):
        del report["correctness"][key]
    assert "no reference labels" in gpucheck.verdict(report)[0]


def _run_check(bundle, tmp_path, rows: int, exit_code: int = 0):
    """`python -m marketpulse.tools.gpucheck` on TEXTS; its JSON report and output."""
    out = tmp_path / "gpucheck.json"
    args = ["--bundle", str(bundle.path), "--texts", str(_texts_csv(tmp_path / "t.csv"))]
    args += ["--rows", str(rows), "--work", str(tmp_path / "work"), "--out", str(out)]
    result = CliRunner().invoke(gpucheck.main, args)
    assert result.exit_code == exit_code, result.output
    return json.loads(out.read_text()), result.output


@pytest.mark.skipif(cuda_provider_available(), reason="checks the no-CUDA behaviour")
def test_without_cuda_every_run_records_a_one_line_error_and_the_check_fails(tiny_bundle, tmp_path):
    report, output = _run_check(tiny_bundle, tmp_path, rows=20, exit_code=1)
    assert "no CUDA provider" in report["correctness"]["error"]
    assert "\n" not in report["correctness"]["error"]
    assert report["auto"]["provider"] == "CPUExecutionProvider"  # auto falls back
    assert set(report["runs"]) == {name for name, _, _ in gpucheck.CONFIGS}
    assert all("no CUDA provider" in run["error"] for run in report["runs"].values())
    missed = report["verdict"]["missed"]
    assert report["verdict"]["ok"] is False and len(missed) == 2 + len(gpucheck.CONFIGS)
    assert missed[0].startswith("--device cuda failed: ") and "no CUDA provider" in missed[0]
    assert "--device auto chose CPUExecutionProvider" in missed[1]
    assert f"Error: gpu-check missed {len(missed)} check(s):" in output
    assert all(miss in output for miss in missed)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_provider_available(), reason="needs onnxruntime-gpu and a GPU")
def test_cuda_scores_every_row_once_and_agrees_with_fp32(tiny_bundle, tmp_path):
    report, output = _run_check(tiny_bundle, tmp_path, rows=2000)
    assert report["correctness"]["provider"] == "CUDAExecutionProvider"
    assert report["correctness"]["duplicates"] == 0
    assert report["correctness"]["agreement"] >= 0.99
    assert all(run.get("rows_scored") == 2000 for run in report["runs"].values())
    assert report["verdict"] == {"ok": True, "min_agreement": 0.99, "missed": []}
    assert "every check passed" in output
