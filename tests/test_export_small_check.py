"""A small check source: int8 calibrates on the validation split, the gate says it is imprecise,
and `--variant auto` quotes the figure that failed the gate, not one that passed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY_LABELS

from marketpulse import variants as registry
from marketpulse.bundle import Bundle, gate_results
from marketpulse.checkpoint import (
    Checkpoint,
    write_metrics,
    write_test_split,
    write_validation_split,
)
from marketpulse.export.checks import (
    CheckSample,
    CheckSource,
    CheckTexts,
    agreement_interval,
    imprecise_gate_warning,
    read_check_sample,
)
from marketpulse.export.outliers import CALIBRATION_ROWS, MIN_CALIBRATION_ROWS
from marketpulse.export.stage import calibration_source

VALIDATION = [f"Validation headline number {i}" for i in range(40)]
TEST_TEXTS = CheckTexts(["a test text"], ["bearish"], "test_split.parquet (1 rows)")


def _checkpoint(path: Path, validation: list[str] | None) -> Checkpoint:
    path.mkdir(parents=True, exist_ok=True)
    if validation is not None:
        write_validation_split(path, validation, ["neutral"] * len(validation))
    return Checkpoint(path, tuple(TINY_LABELS), 64, None)


def _csv(path: Path, n: int) -> Path:
    path.write_text("id,text\n" + "".join(f'{i},"Check text {i} about stocks"\n' for i in range(n)))
    return path


def _sample(tmp_path: Path, n: int, rows: int = 2000) -> CheckSample:
    source = CheckSource(input=_csv(tmp_path / f"check{n}.csv", n), rows=rows)
    return read_check_sample(source, CALIBRATION_ROWS)


def test_too_few_check_texts_calibrate_on_the_validation_split_and_all_are_gated(tmp_path, capsys):
    sample = _sample(tmp_path, 3)  # the user-tester's case: 2 gated, 1 calibrates
    assert len(sample.texts) == 2 and len(sample.calibration) == 1
    trained = _checkpoint(tmp_path / "ckpt", VALIDATION)
    texts, calibrated_on, gated = calibration_source(trained, TEST_TEXTS, sample)
    assert texts == VALIDATION
    assert (
        calibrated_on
        == "validation_split.parquet (40 of its 40 rows, disjoint from the gated texts)"
    )
    assert gated.texts == sample.texts + sample.calibration  # all three, in sample order
    assert gated.calibration == [] and gated.provenance()["calibration_rows"] == 0
    assert gated.provenance()["rows"] == 3
    err = capsys.readouterr().err
    assert (
        "check texts: only 3 usable in file "
        f"{tmp_path / 'check3.csv'}, column text, too few to spare {MIN_CALIBRATION_ROWS} "
        "for calibration; int8 calibrates on validation_split.parquet (40 of its 40 rows) instead, and "
        "all 3 are gated"
    ) in err
    assert "further sampled rows" not in err and len(err.strip().splitlines()) == 1


def test_the_check_rows_cap_still_holds_when_the_gate_takes_the_calibration_rows(tmp_path, capsys):
    sample = _sample(tmp_path, 32, rows=3)  # 3 gated, 29 left: too few to calibrate
    trained = _checkpoint(tmp_path / "ckpt", VALIDATION)
    texts, _, gated = calibration_source(trained, TEST_TEXTS, sample, max_gated=3)
    assert texts == VALIDATION and gated.texts == sample.texts and gated.calibration == []
    err = capsys.readouterr().err
    assert "only 32 usable" in err and "instead, and 3 (--check-rows) are gated" in err


def test_enough_check_texts_still_calibrate_on_further_rows_of_the_source(tmp_path, capsys):
    n = 2 * MIN_CALIBRATION_ROWS  # half and half: just enough to spare
    sample = _sample(tmp_path, n)
    trained = _checkpoint(tmp_path / "ckpt", VALIDATION)
    texts, calibrated_on, gated = calibration_source(trained, TEST_TEXTS, sample)
    assert gated == sample and texts == sample.calibration
    assert len(texts) == MIN_CALIBRATION_ROWS and not set(texts) & set(sample.texts)
    assert calibrated_on.startswith(f"{MIN_CALIBRATION_ROWS} further sampled rows of file")
    assert "validation_split" not in capsys.readouterr().err


def test_without_a_validation_split_a_small_calibration_set_is_a_warning(tmp_path, capsys):
    sample = _sample(tmp_path, 3)
    trained = _checkpoint(tmp_path / "ckpt", None)
    texts, calibrated_on, gated = calibration_source(trained, TEST_TEXTS, sample)
    assert gated == sample and texts == sample.calibration  # today's split, kept
    assert calibrated_on.startswith("1 further sampled rows of file")
    err = capsys.readouterr().err
    assert "int8 calibrates on 1 further sampled rows" in err
    warning = next(line for line in err.splitlines() if "warning" in line)
    assert "int8 calibrates on only 1 text(s)" in warning
    assert "no validation_split.parquet" in warning
    assert f"at least {2 * MIN_CALIBRATION_ROWS} usable texts" in warning
    # without check texts nothing changes: the validation split, or the gated texts
    assert calibration_source(trained, TEST_TEXTS, None)[:2] == (
        TEST_TEXTS.texts,
        "test_split.parquet (1 rows) (also gated)",
    )
    assert "warning" not in capsys.readouterr().err


def test_few_check_texts_warn_that_the_gate_is_imprecise():
    assert imprecise_gate_warning(200) is None and imprecise_gate_warning(2000) is None
    warning = imprecise_gate_warning(3)
    low, high = agreement_interval(3, 3)
    assert high == pytest.approx(1.0)
    assert warning.startswith("warning: only 3 check texts: the gate on them can hardly tell")
    assert f"95% interval of {low:.2%}-100.00%" in warning and "at least 200" in warning


def test_export_with_three_check_texts_calibrates_on_the_validation_split(
    tiny_checkpoint, tmp_path, capsys
):
    pytest.importorskip("optimum.onnxruntime")
    from marketpulse.export import ExportConfig, run

    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))
    write_test_split(checkpoint, ["Apple jumps", "Oil slides", "Fed holds"], TINY_LABELS)
    write_validation_split(checkpoint, VALIDATION, ["neutral"] * len(VALIDATION))
    write_metrics(checkpoint, {}, labels=TINY_LABELS, max_length=32, base_model="tiny")
    csv = _csv(tmp_path / "few.csv", 3)
    bundle = run(
        ExportConfig(
            model=checkpoint,
            out=tmp_path / "bundle",
            variants=("fp32", "int8"),
            allow_accuracy_drop=True,
            check_source=CheckSource(input=csv),
        )
    )
    manifest = bundle.manifest
    assert manifest["calibration_texts"] == (
        "validation_split.parquet (40 of its 40 rows, disjoint from the gated texts)"
    )
    calibration = manifest["variants"]["int8"]["quantization"]["calibration"]
    assert calibration["rows"] == len(VALIDATION)
    sample = manifest["checks"]["check_texts"]
    assert sample["rows"] == 3 and sample["calibration_rows"] == 0
    assert sample["variants"]["int8"]["rows"] == 3
    assert manifest["checks"]["gate"]["variants"]["int8"]["check_rows"] == 3
    err = capsys.readouterr().err
    assert "all 3 are gated" in err and "1 further sampled rows" not in err
    assert "warning: only 3 check texts: the gate on them can hardly tell" in err
    assert "and 3 check texts from file" in err  # the checks ran on all three


def _manifest(int8: dict, **checks) -> dict:
    return {
        "variants": {"fp32": {}, "int8": {}},
        "checks": {
            "texts": "test_split.parquet (150 rows)",
            "gate": {
                "min_agreement": 0.99,
                "max_f1_drop": 0.01,
                "variants": {"fp32": {"passed": True}, "int8": int8},
            },
            "variants": {"fp32": {}, "int8": {"agreement": int8.get("test_agreement")}},
            **checks,
        },
    }


def test_a_failed_graph_quotes_the_figure_that_failed_not_the_one_that_passed(tmp_path):
    from marketpulse.runtime import autovariant

    int8 = {"passed": False, "test_agreement": 0.82, "check_agreement": 1.0, "check_rows": 2}
    bundle = Bundle(tmp_path, _manifest(int8))
    variant, reason = autovariant.pick(bundle, ["fp32", "int8"], {"fp32": 100.0, "int8": 300.0})
    assert (variant, reason) == (
        registry.REFERENCE,
        "auto: fp32, int8 failed the export gate (agrees with PyTorch on 82.0% of the test split)",
    )
    # failed on the check texts only: that figure
    int8.update(test_agreement=0.995, check_agreement=0.5)
    gate = gate_results(_manifest(int8))["int8"]
    assert gate.describe() == "agrees with PyTorch on 50.0% of 2 check texts"
    # both failed: both figures
    int8.update(test_agreement=0.95)
    assert gate_results(_manifest(int8))["int8"].describe() == (
        "agrees with PyTorch on 95.0% of the test split and 50.0% of 2 check texts"
    )
    # a figure just under the bar keeps the digits that show it is under
    int8.update(test_agreement=0.98951, check_agreement=1.0)
    assert gate_results(_manifest(int8))["int8"].describe() == (
        "agrees with PyTorch on 98.95% of the test split"
    )


def test_a_macro_f1_drop_is_quoted_when_agreement_passed():
    int8 = {"passed": False, "test_agreement": 0.995, "check_agreement": None, "check_rows": None}
    manifest = _manifest(int8)
    manifest["checks"]["variants"]["int8"]["f1_drop"] = 0.03
    assert gate_results(manifest)["int8"].describe() == (
        "macro-F1 0.0300 below PyTorch's on the test split"
    )


def test_older_manifests_still_describe_their_gate():
    # verdicts recorded but thresholds missing or null: every figure, as before
    int8 = {"passed": False, "test_agreement": 0.82, "check_agreement": None, "check_rows": None}
    manifest = _manifest(int8)
    manifest["checks"]["gate"]["min_agreement"] = None
    del manifest["checks"]["gate"]["max_f1_drop"]
    assert gate_results(manifest)["int8"].describe() == (
        "agrees with PyTorch on 82.0% of the test split"
    )
    # no verdicts: inferred from checks.variants, which were on the test split
    manifest = _manifest({})
    del manifest["checks"]["gate"]["variants"]
    manifest["checks"]["variants"]["int8"] = {"agreement": 0.97, "f1_drop": None, "rows": 150}
    gate = gate_results(manifest)["int8"]
    assert not gate.passed and not gate.recorded
    assert gate.describe() == "agrees with PyTorch on 97.0% of the test split"
    # nothing at all recorded
    assert gate_results({"variants": {"fp32": {}, "int8": {}}})["int8"].describe() == (
        "no agreement figure recorded"
    )
