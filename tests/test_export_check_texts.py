"""Export's gate on check texts: unlabeled text like what will be scored (CSV or DuckDB)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from marketpulse.bundle import load_bundle
from marketpulse.cli import main
from marketpulse.export.checks import MARKET_SENTENCES, CheckSource, read_check_sample

SUBJECTS = ["Apple", "Oil", "The Fed", "Tesla", "Gold", "Bitcoin", "Nvidia", "Treasuries"]
MOVES = ["jumps after earnings", "slides on weak demand", "holds steady", "hits a record"]
# 32 distinct texts: a count the built-in test sentences (26) never have
TEXTS = [f"{s} {m}" for s in SUBJECTS for m in MOVES]
GATE_KEYS = {"passed", "test_agreement", "check_agreement", "check_rows"}


def _news_db(path: Path, rows: list[tuple[int, str | None]], table: str = "news") -> Path:
    con = duckdb.connect(str(path))
    con.execute(f'CREATE TABLE {table} (id INTEGER, "body text" VARCHAR)')
    con.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)
    con.close()
    return path


def _rows() -> list[tuple[int, str | None]]:
    """The texts plus a NULL and two blank ones, which the sample must skip."""
    return [(i, t) for i, t in enumerate(TEXTS)] + [(100, None), (101, ""), (102, "   ")]


def test_check_sample_is_reproducible_whatever_the_row_order(tmp_path):
    rows = _rows()
    db = _news_db(tmp_path / "a.duckdb", rows)
    reversed_db = _news_db(tmp_path / "b.duckdb", rows[::-1])
    samples = [
        read_check_sample(CheckSource(db=d, table="news", text_col="body text", rows=10))
        for d in (db, reversed_db)
    ]
    assert samples[0].texts == samples[1].texts
    assert samples[0].fingerprint == samples[1].fingerprint
    assert len(samples[0].texts) == 10 and set(samples[0].texts) <= set(TEXTS)
    assert samples[0].rows_read == len(TEXTS) + 3
    assert samples[0].skipped == {"null_text": 1, "empty_text": 2}
    # a bigger cap than there are usable rows takes them all
    everything = read_check_sample(CheckSource(db=db, table="news", text_col="body text"))
    assert sorted(everything.texts) == sorted(TEXTS)
    assert everything.fingerprint != samples[0].fingerprint
    # calibration rows come after the gated ones in the same order, never among them
    both = read_check_sample(
        CheckSource(db=db, table="news", text_col="body text", rows=10), calibration_rows=8
    )
    assert both.texts == samples[0].texts and len(both.calibration) == 8
    assert not set(both.calibration) & set(both.texts)
    # too few rows for both: the calibration takes half
    short = read_check_sample(
        CheckSource(db=db, table="news", text_col="body text", rows=30), calibration_rows=512
    )
    assert len(short.texts) == len(short.calibration) == len(TEXTS) // 2
    assert sorted(short.texts + short.calibration) == sorted(TEXTS)
    # never more gated texts than asked for: the rest calibrates
    few = read_check_sample(
        CheckSource(db=db, table="news", text_col="body text", rows=3), calibration_rows=512
    )
    assert few.texts == samples[0].texts[:3]
    assert sorted(few.texts + few.calibration) == sorted(TEXTS)


def test_export_gates_on_check_texts_from_a_csv(tiny_checkpoint, tmp_path):
    pytest.importorskip("optimum.onnxruntime")
    csv = tmp_path / "scored.csv"
    csv.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in _rows() if t) + "200,\n")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        main,
        [
            *("export", "--model", str(tiny_checkpoint), "--out", str(out)),
            *("--variants", "fp32,int8", "--allow-accuracy-drop"),
            *("--check-input", str(csv), "--check-rows", "30"),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = load_bundle(out).manifest
    checks = manifest["checks"]
    sample = checks["check_texts"]
    assert sample["source"] == f"file {csv}, column text"
    # 32 usable texts cannot give 30 gated rows and 512 to calibrate: half and half
    assert sample["rows"] == sample["calibration_rows"] == 16
    assert sample["rows_read"] == len(TEXTS) + 2
    assert sample["fingerprint"].startswith("sha256:") and len(sample["fingerprint"]) == 71
    assert manifest["calibration_texts"] == (
        f"16 further sampled rows of {sample['source']} (disjoint from the check texts)"
    )
    fp32 = sample["variants"]["fp32"]
    assert fp32["rows"] == 16 and fp32["agreement"] == 1.0
    assert fp32["max_abs_logit_diff"] <= fp32["parity_tolerance"]
    verdicts = checks["gate"]["variants"]
    assert set(verdicts) == {"fp32", "int8"}
    assert all(set(v) == GATE_KEYS for v in verdicts.values())
    assert verdicts["fp32"]["passed"] is True
    int8 = verdicts["int8"]
    assert int8["check_rows"] == 16
    assert int8["check_agreement"] == sample["variants"]["int8"]["agreement"]
    assert int8["test_agreement"] == checks["variants"]["int8"]["agreement"]
    # the verdict is the gate on both sets, whatever --allow-accuracy-drop published
    least = checks["gate"]["min_agreement"]
    assert int8["passed"] == (min(int8["check_agreement"], int8["test_agreement"]) >= least)
    assert f"check texts    file {csv}, column text: 16 of {len(TEXTS) + 2} rows" in result.output


def test_an_fp32_only_export_gates_on_every_check_text(tiny_checkpoint, tmp_path):
    """No int8 graph, nothing to calibrate: no check text is held back for it."""
    pytest.importorskip("optimum.onnxruntime")
    from marketpulse.export import ExportConfig, run

    csv = tmp_path / "scored.csv"
    csv.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in _rows() if t))
    bundle = run(
        ExportConfig(
            model=tiny_checkpoint,
            out=tmp_path / "bundle",
            variants=("fp32",),
            check_source=CheckSource(input=csv, rows=30),
        )
    )
    sample = bundle.manifest["checks"]["check_texts"]
    assert sample["rows"] == 30 and sample["calibration_rows"] == 0
    assert "calibration_texts" not in bundle.manifest


def test_variant_failing_on_check_texts_is_published_marked_failed(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """Forced: every agreement measured on the check texts is halved."""
    pytest.importorskip("optimum.onnxruntime")
    from marketpulse.export import ExportConfig, checks, run
    from marketpulse.export.summary import format_manifest

    real_compare = checks.compare

    def halved_on_check_texts(onnx_logits, *args):
        result = real_compare(onnx_logits, *args)
        if result["rows"] == len(TEXTS) // 2:  # the other half calibrates
            result["agreement"] /= 2
        return result

    monkeypatch.setattr(checks, "compare", halved_on_check_texts)
    db = _news_db(tmp_path / "news.duckdb", _rows())
    bundle = run(
        ExportConfig(
            model=tiny_checkpoint,
            out=tmp_path / "bundle",
            variants=("fp32", "int8"),
            allow_accuracy_drop=True,
            check_source=CheckSource(db=db, table="news", text_col="body text"),
        )
    )
    gate = bundle.manifest["checks"]["gate"]
    assert gate["variants"]["int8"]["passed"] is False
    assert gate["variants"]["int8"]["check_agreement"] <= 0.5
    assert gate["variants"]["int8"]["check_rows"] == len(TEXTS) // 2
    assert gate["variants"]["fp32"]["passed"] is True  # fp32 passes by parity
    assert gate["check_failures"] and gate["check_failures"][0].startswith("int8 FAILED")
    assert bundle.variants == ["fp32", "int8"]  # published with the failed graph in it
    assert load_bundle(bundle.path).manifest == bundle.manifest
    assert json.loads((bundle.path / "manifest.json").read_text())["valid"] is True
    logged = capsys.readouterr().err
    assert "int8 FAILED the gate" in logged and "will not be chosen automatically" in logged
    summary = format_manifest(bundle.path, bundle.manifest)
    assert f"table news in {db}, column body text" in summary
    int8_line = next(line for line in summary.splitlines() if line.startswith("  int8"))
    assert (
        "FAILED the gate (agreement on the check texts below the gate's minimum), not chosen automatically"
        in int8_line
    )
    fp32_line = next(line for line in summary.splitlines() if line.startswith("  fp32"))
    assert "FAILED" not in fp32_line


def test_without_check_texts_the_gate_records_test_split_only(tiny_bundle):
    checks = tiny_bundle.manifest["checks"]
    assert checks["check_texts"] is None
    verdicts = checks["gate"]["variants"]
    assert set(verdicts) == {"fp32", "int8", "fp16"}
    assert verdicts["fp32"] == {
        "passed": True,
        "test_agreement": 1.0,
        "check_agreement": None,
        "check_rows": None,
    }
    # fp16 cannot be gated without CUDA: passed, with nothing measured on its provider
    if "skipped" in checks["variants"]["fp16"]:
        assert verdicts["fp16"]["passed"] is True and verdicts["fp16"]["test_agreement"] is None
    assert tiny_bundle.manifest["calibration_texts"] == f"{checks['texts']} (also gated)"
    assert checks["variants"]["int8"]["rows"] == len(MARKET_SENTENCES)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--check-table", "nope"], "table 'nope' not found in "),
        (["--check-table", "news", "--check-text-col", "text"], "column 'text' not found in"),
    ],
)
def test_bad_check_table_or_column_is_a_one_line_error(tiny_checkpoint, tmp_path, flags, message):
    db = _news_db(tmp_path / "news.duckdb", _rows())
    out = tmp_path / "bundle"
    args = ["export", "--model", str(tiny_checkpoint), "--out", str(out), "--check-db", str(db)]
    result = CliRunner().invoke(main, [*args, *flags])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "--check-table" in result.output or "--check-text-col" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["news.duckdb"]  # no staging


def test_bad_check_csv_column_is_a_one_line_error(tiny_checkpoint, tmp_path):
    csv = tmp_path / "scored.csv"
    csv.write_text("id,headline\n1,Apple jumps\n")
    args = ["export", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(main, [*args, "--check-input", str(csv)])
    assert result.exit_code == 1
    assert "column 'text' not found in" in result.output and "headline" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--check-table", "news"], "pass --check-db too"),
        (["--check-db", "x.duckdb"], "pass --check-table too"),
        (["--check-input", "a.csv", "--check-db", "x.duckdb", "--check-table", "t"], "either"),
        (["--check-rows", "10"], "--test-rows"),
    ],
)
def test_check_flag_combinations_are_usage_errors(tmp_path, flags, message):
    args = ["export", "--model", str(tmp_path), "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(main, [*args, *flags])
    assert result.exit_code == 2
    assert message in result.output
