"""Export stage on the tiny model: files, manifest, graphs, hashes, the accuracy gate, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_LABELS

from marketpulse import cpu
from marketpulse.bundle import load_bundle, read_manifest
from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.export.checks import MARKET_SENTENCES

pytest.importorskip("optimum.onnxruntime")

TEXTS = ["Apple shares jump after earnings beat", "Oil slides as inventories rise", "Fed holds"]


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def _labeled_checkpoint(tiny_checkpoint: Path, tmp_path: Path, labels: list[str]) -> Path:
    """The tiny checkpoint plus a test split and metrics.json, as `marketpulse train` leaves it."""
    from marketpulse.checkpoint import write_metrics, write_test_split

    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))
    texts = [f"{t} ({i})" for i in range(10) for t in TEXTS][: len(labels)]
    write_test_split(checkpoint, texts, labels)
    write_metrics(checkpoint, {}, labels=TINY_LABELS, max_length=64, base_model="tiny-test-bert")
    return checkpoint


def test_bundle_has_every_file_and_manifest_field(tiny_bundle, tiny_checkpoint):
    names = {p.name for p in tiny_bundle.path.iterdir()}
    assert names == {
        "model.fp32.onnx",
        "model.int8.onnx",
        "model.fp16.onnx",
        "tokenizer.json",
        "labels.json",
        "manifest.json",
    }
    manifest = tiny_bundle.manifest
    assert manifest["valid"] is True
    assert manifest["labels"] == ["bearish", "bullish", "neutral"]
    assert json.loads((tiny_bundle.path / "labels.json").read_text()) == manifest["labels"]
    assert manifest["max_length"] == 128  # no metrics.json in the tiny checkpoint
    assert manifest["opset"] == 18
    assert manifest["source_checkpoint"] == str(tiny_checkpoint.resolve())
    assert set(manifest["files"]) == names - {"manifest.json"}
    for library in ("torch", "transformers", "optimum-onnx", "onnxruntime", "onnx", "tokenizers"):
        assert manifest["libraries"][library][0].isdigit()
    checks = manifest["checks"]["variants"]
    assert checks["fp32"]["max_abs_logit_diff"] <= 1e-4
    assert checks["fp32"]["agreement"] == 1.0
    # The gate read the agreement it recorded: below the bar exactly when it noted a drop.
    gate = manifest["checks"]["gate"]
    int8_dropped = any(d.startswith("int8 agrees") for d in gate["accuracy_drops"])
    assert (checks["int8"]["agreement"] < gate["min_agreement"]) == int8_dropped
    assert checks["int8"]["rows"] == checks["fp32"]["rows"] == len(MARKET_SENTENCES)
    assert checks["fp16"]["skipped"] == "no CUDA provider"
    assert checks["fp16"]["cpu_provider"]["max_abs_logit_diff"] < 0.05  # float16 rounding only
    quant = manifest["variants"]["int8"]["quantization"]
    assert quant["per_channel"] is True and quant["mode"] == "static"
    assert quant["calibration"]["method"] == "MinMax" and quant["calibration"]["rows"] > 0
    # load_bundle re-verifies every hash
    assert load_bundle(tiny_bundle.path).version == manifest["model_version"]


def test_a_bundle_is_readable_like_a_folder_made_with_mkdir(tiny_bundle, tmp_path):
    """The staging folder comes from mkdtemp (0700); a scoring service running as another
    user must still read the published bundle: modes as the umask gives new files."""
    import stat

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "f").write_text("x")
    mode = stat.S_IMODE
    assert mode(tiny_bundle.path.stat().st_mode) == mode(plain.stat().st_mode)
    for path in tiny_bundle.path.iterdir():
        assert mode(path.stat().st_mode) == mode((plain / "f").stat().st_mode), path.name


def test_graphs_have_dynamic_axes_and_expected_types(tiny_bundle):
    import onnx

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    for variant in ("fp32", "int8", "fp16"):
        graph = onnx.load(str(tiny_bundle.variant_path(variant))).graph
        inputs = {i.name: i for i in graph.input}
        assert dims(inputs["input_ids"]) == ["batch_size", "sequence_length"]
        assert inputs["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT64
        (logits,) = graph.output
        assert logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, variant
        assert dims(logits) == ["batch_size", 3]
    int8_graph = onnx.load(str(tiny_bundle.variant_path("int8"))).graph
    int8_ops = [n.op_type for n in int8_graph.node]
    # Static QDQ: 2 layers x 6 weight MatMuls read both operands through DequantizeLinear
    # (constant scales, so a row scores the same in any batch); Q.K^T and softmax.V
    # (2 per layer) stay float, and so do the FFN's outlier-channel MatMuls (1 per layer);
    # the pooler and the classifier stay float Gemm
    producer = {out: n.op_type for n in int8_graph.node for out in n.output}
    quantized = {
        n.name
        for n in int8_graph.node
        if n.op_type == "MatMul" and all(producer.get(i) == "DequantizeLinear" for i in n.input)
    }
    assert len(quantized) == 2 * 6
    assert int8_ops.count("MatMul") == 2 * 6 + 2 * 2 + 2
    assert int8_ops.count("Gemm") == 2
    outliers = {f"/bert/encoder/layer.{i}/output/dense/MatMul_outliers" for i in (0, 1)}
    assert outliers.isdisjoint(quantized) and outliers <= {n.name for n in int8_graph.node}
    # each LayerNorm output feeding weight MatMuls is smoothed by one Mul (2 per layer)
    assert len([n for n in int8_graph.node if n.name.endswith("_smooth")]) == 2 * 2
    assert "DynamicQuantizeLinear" not in int8_ops
    fp16 = onnx.load(str(tiny_bundle.variant_path("fp16"))).graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.initializer)


def test_fp32_graph_matches_pytorch_on_fresh_texts(tiny_bundle, tiny_checkpoint):
    """Independent of export's own check: different texts, different batch shapes."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from marketpulse.inference.predictor import Predictor

    texts = ["Tesla recalls 2 million cars", "Gold at record high; miners rally hard today"]
    predictor = Predictor(tiny_bundle, variant="fp32")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        expected = torch.softmax(model(**batch).logits, dim=-1).numpy()
    np.testing.assert_allclose(predictor.predict_proba(texts), expected, atol=1e-5)


@pytest.mark.parametrize("damage", ["altered byte", "missing file"])
def test_corrupt_bundle_is_refused_by_load_and_inspect(tiny_bundle, tmp_path, damage):
    bundle = _copy(tiny_bundle.path, tmp_path)
    if damage == "altered byte":
        graph = bundle / "model.int8.onnx"
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
        expected = "model.int8.onnx: sha256 mismatch"
    else:
        (bundle / "tokenizer.json").unlink()
        expected = "tokenizer.json: missing"
    with pytest.raises(MarketpulseError, match=expected):
        load_bundle(bundle)
    result = CliRunner().invoke(main, ["inspect", str(bundle)])
    assert result.exit_code == 1
    assert expected in result.output and "re-export" in result.output


def test_inspect_prints_manifest_and_verifies(tiny_bundle):
    result = CliRunner().invoke(main, ["inspect", str(tiny_bundle.path)])
    assert result.exit_code == 0, result.output
    assert tiny_bundle.version in result.output
    assert "all 5 file hashes verified" in result.output
    assert "check skipped: no CUDA provider" in result.output
    as_json = CliRunner().invoke(main, ["inspect", "--json", str(tiny_bundle.path)])
    assert json.loads(as_json.output)["model_version"] == tiny_bundle.version


def test_inspect_rejects_a_directory_that_is_no_bundle(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert result.exit_code == 1
    assert "not a marketpulse bundle" in result.output


def test_cli_export_writes_requested_variants_only(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        main,
        ["export", "--model", str(tiny_checkpoint), "--out", str(out), "--variants", "fp32,int8"],
    )
    assert result.exit_code == 0, result.output
    assert "model.int8.onnx" in result.output
    bundle = load_bundle(out)
    assert bundle.variants == ["fp32", "int8"]
    assert not (out / "model.fp16.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging left over


@pytest.mark.parametrize(("isa", "reduce_range"), [("avx2", True), ("avx512_vnni", False)])
def test_int8_isa_quantizes_for_the_named_cpu_not_this_one(
    tiny_checkpoint, tmp_path, isa, reduce_range
):
    """The exporting machine need not be the scoring one: --int8-isa names the scoring CPU
    kind, and the manifest records the config that was used, whatever this CPU is."""
    out = tmp_path / "bundle"
    args = ["export", "--model", str(tiny_checkpoint), "--out", str(out), "--variants", "fp32,int8"]
    result = CliRunner().invoke(main, [*args, "--int8-isa", isa, "--allow-accuracy-drop"])
    assert result.exit_code == 0, result.output
    quantization = read_manifest(out)["variants"]["int8"]["quantization"]
    assert (quantization["cpu_isa"], quantization["reduce_range"]) == (isa, reduce_range)
    assert quantization["exported_on"] == cpu.isa()  # where the gate ran the int8 kernels
    assert f"static quantization for {isa}" in result.output


@pytest.mark.parametrize("optimization", ["O1", "O2"])
def test_export_writes_nothing_into_the_working_directory(
    tiny_checkpoint, tmp_path, monkeypatch, optimization
):
    """ORT's shape inference drops sym_shape_infer_temp.onnx and <uuid>.data into the
    cwd when it gives up; O2 runs it on the fused graph, O1 runs the plain quantizer."""
    from marketpulse.export import ExportConfig, run

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = ExportConfig(
        model=tiny_checkpoint,
        out=tmp_path / "bundle",
        variants=("fp32", "int8"),
        optimization=optimization,
        allow_accuracy_drop=True,
    )
    bundle = run(cfg)
    assert bundle.variants == ["fp32", "int8"]
    assert list(cwd.iterdir()) == []


def _halve_agreement(monkeypatch) -> None:
    """Every agreement export measures is halved (fp32 is gated by parity, not agreement)."""
    from marketpulse.export import checks

    real_compare = checks.compare

    def halved(*args):
        result = real_compare(*args)
        result["agreement"] /= 2
        return result

    monkeypatch.setattr(checks, "compare", halved)


def test_min_agreement_above_one_is_refused():
    result = CliRunner().invoke(main, ["export", "--model", ".", "--min-agreement", "1.01"])
    assert result.exit_code == 2 and "--min-agreement" in result.output


def test_failed_agreement_fails_and_keeps_the_old_bundle(
    tiny_bundle, tiny_checkpoint, tmp_path, monkeypatch
):
    out = _copy(tiny_bundle.path, tmp_path)
    before = read_manifest(out)
    _halve_agreement(monkeypatch)
    args = ["export", "--model", str(tiny_checkpoint), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--variants", "fp32,int8"])
    assert result.exit_code == 1
    assert "export rejected" in result.output and "int8 agrees with PyTorch" in result.output
    assert "--allow-accuracy-drop" in result.output
    # 26 built-in sentences calibrated int8 (no validation split): more texts come first
    assert "int8 calibrated its scales on only 26 text(s): pass --check-input" in result.output
    assert read_manifest(out) == before  # the bundle that was there is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_allow_accuracy_drop_publishes_and_records_the_drop(tiny_checkpoint, tmp_path, monkeypatch):
    from marketpulse.export import ExportConfig, run

    _halve_agreement(monkeypatch)

    bundle = run(
        ExportConfig(
            model=tiny_checkpoint,
            out=tmp_path / "bundle",
            variants=("fp32", "int8"),
            allow_accuracy_drop=True,
        )
    )
    gate = bundle.manifest["checks"]["gate"]
    assert gate["allow_accuracy_drop"] is True
    assert gate["accuracy_drops"] and "int8" in gate["accuracy_drops"][0]
    from marketpulse.export.summary import format_manifest

    int8 = next(
        line
        for line in format_manifest(bundle.path, bundle.manifest).splitlines()
        if line.startswith("  int8")
    )
    assert f"FAILED the gate ({gate['accuracy_drops'][0]}" in int8  # inspect says why


def test_parity_failure_is_fatal_even_with_allow_accuracy_drop(tiny_checkpoint, tmp_path):
    from marketpulse.export import ExportConfig, run

    cfg = ExportConfig(
        model=tiny_checkpoint,
        out=tmp_path / "bundle",
        variants=("fp32",),
        parity_tolerance=-1.0,  # no graph can meet it
        allow_accuracy_drop=True,
    )
    with pytest.raises(MarketpulseError, match="fp32 logits differ from PyTorch"):
        run(cfg)
    assert not (tmp_path / "bundle").exists()


def test_test_split_gives_macro_f1_and_metrics_json_settings(tiny_checkpoint, tmp_path):
    from marketpulse.export import ExportConfig, run

    labels = ["bearish", "bullish", "neutral"] * 4
    checkpoint = _labeled_checkpoint(tiny_checkpoint, tmp_path, labels)
    bundle = run(
        ExportConfig(
            model=checkpoint,
            out=tmp_path / "b",
            variants=("fp32", "int8"),
            allow_accuracy_drop=True,
        )
    )
    checks = bundle.manifest["checks"]
    assert checks["texts"] == "test_split.parquet (12 rows)"
    # PyTorch's macro-F1, recomputed through train's own predictor (another code path)
    from marketpulse.checkpoint import load_checkpoint, read_test_split
    from marketpulse.metrics import classification_metrics
    from marketpulse.train.predict import load_model, predict_logits

    trained = load_checkpoint(checkpoint)
    texts, truth = read_test_split(trained)
    model, tokenizer = load_model(trained)
    logits = predict_logits(model, tokenizer, texts, max_length=trained.max_length)
    predicted = [TINY_LABELS[i] for i in logits.argmax(axis=1)]
    expected_f1 = classification_metrics(truth, predicted, TINY_LABELS)["macro_f1"]
    assert checks["pytorch"]["macro_f1"] == pytest.approx(expected_f1)
    assert checks["variants"]["fp32"]["macro_f1"] == pytest.approx(checks["pytorch"]["macro_f1"])
    int8 = checks["variants"]["int8"]
    assert int8["f1_drop"] == pytest.approx(checks["pytorch"]["macro_f1"] - int8["macro_f1"])
    assert bundle.manifest["base_model"] == "tiny-test-bert"
    # no validation split beside it (a checkpoint from before train saved one)
    assert bundle.manifest["calibration_texts"] == "test_split.parquet (12 rows) (also gated)"
    assert bundle.manifest["calibration_rows"] == 12
    assert bundle.max_length == 64
    assert (
        json.loads((bundle.path / "tokenizer.json").read_text())["truncation"]["max_length"] == 64
    )


def test_test_split_with_unknown_label_is_refused(tiny_checkpoint, tmp_path):
    from marketpulse.export import ExportConfig, run

    checkpoint = _labeled_checkpoint(tiny_checkpoint, tmp_path, ["bearish", "sideways"])
    with pytest.raises(MarketpulseError, match="sideways"):
        run(ExportConfig(model=checkpoint, out=tmp_path / "b", variants=("fp32",)))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "variants, message", [("fp32,int4", "int4"), ("int8", "must include fp32")]
)
def test_bad_variants_are_usage_errors(tmp_path, variants, message):
    result = CliRunner().invoke(
        main,
        ["export", "--model", str(tmp_path), "--out", str(tmp_path / "b"), "--variants", variants],
    )
    assert result.exit_code == 2
    assert message in result.output


def test_export_refuses_missing_checkpoint_and_foreign_out_dir(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(
        main, ["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 1 and "checkpoint directory" in result.output
    assert "not found" in result.output
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    result = CliRunner().invoke(
        main, ["export", "--model", str(tiny_checkpoint), "--out", str(foreign)]
    )
    assert result.exit_code == 1 and "not a bundle" in result.output
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]


def test_checkpoint_without_weights_fails_cleanly(tiny_checkpoint, tmp_path):
    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))
    (checkpoint / "model.safetensors").unlink()
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", "--model", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 1
    assert "has no model weights (model.safetensors)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no staging left


def test_cli_defaults_match_export_config():
    from marketpulse.export import ExportConfig
    from marketpulse.export.graphs import INT8_ISAS

    params = {p.name: p.default for p in main.commands["export"].params}
    defaults = ExportConfig(model=Path("m"), out=Path("o"))
    assert tuple(params["variants"].split(",")) == defaults.variants
    for name in ("min_agreement", "max_f1_drop", "optimization", "int8_order", "int8_isa", "opset"):
        assert params[name] == getattr(defaults, name), name
    choices = {
        p.name: p.type.choices for p in main.commands["export"].params if p.name == "int8_isa"
    }
    assert tuple(choices["int8_isa"]) == INT8_ISAS  # the CLI offers what ExportConfig accepts


def test_int8_calibrates_on_the_validation_split_not_the_gated_test_split(
    tiny_checkpoint, tmp_path
):
    from marketpulse.checkpoint import write_validation_split
    from marketpulse.export import ExportConfig, run

    checkpoint = _labeled_checkpoint(tiny_checkpoint, tmp_path, ["bearish", "bullish"] * 3)
    validation = [f"Validation headline number {i}" for i in range(9)] + ["   "]
    write_validation_split(checkpoint, validation, ["neutral"] * len(validation))
    bundle = run(
        ExportConfig(
            model=checkpoint,
            out=tmp_path / "b",
            variants=("fp32", "int8"),
            allow_accuracy_drop=True,
        )
    )
    assert bundle.manifest["checks"]["texts"] == "test_split.parquet (6 rows)"
    assert bundle.manifest["calibration_texts"] == (
        "validation_split.parquet (9 of its 10 rows, disjoint from the gated texts)"
    )
    calibration = bundle.manifest["variants"]["int8"]["quantization"]["calibration"]
    assert calibration["rows"] == 9  # the blank one is skipped


def test_a_trained_checkpoint_without_its_test_split_is_checked_with_a_warning(
    tiny_checkpoint, tmp_path, capsys
):
    from marketpulse.checkpoint import load_checkpoint
    from marketpulse.export.checks import load_check_texts

    checkpoint = _labeled_checkpoint(tiny_checkpoint, tmp_path, ["bearish", "bullish"])
    (checkpoint / "test_split.parquet").unlink()
    texts = load_check_texts(load_checkpoint(checkpoint), None)
    assert texts.source == "built-in market sentences" and texts.labels is None
    err = capsys.readouterr().err
    assert "test_split.parquet is missing" in err and "pass --check-input" in err
    # a plain Hugging Face directory never had one: no warning
    load_check_texts(load_checkpoint(tiny_checkpoint), None)
    assert capsys.readouterr().err == ""
