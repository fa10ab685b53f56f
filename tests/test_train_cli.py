"""`marketpulse train` / `evaluate` end to end on the tiny BERT: files written, errors."""

from __future__ import annotations

import json
import os
import shutil
import stat

import duckdb
import pytest
from click.testing import CliRunner
from conftest import train_args

from marketpulse.checkpoint import (
    WEIGHTS,
    load_checkpoint,
    read_test_split,
    read_validation_split,
)
from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.train.out_dir import check_train_out
from marketpulse.urls import normalizes_urls

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def trained(market_db, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    result = CliRunner().invoke(main, train_args(market_db, out, tiny_checkpoint, "--seed", "3"))
    assert result.exit_code == 0, result.output
    return out, result


def test_train_writes_checkpoint_metrics_and_test_split(trained, market_db, tiny_checkpoint):
    out, result = trained
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "metrics.json",
        "test_split.parquet",
        "validation_split.parquet",
    ):
        assert (out / name).is_file(), name
    assert not (out / "_trainer").exists()  # Trainer's epoch checkpoints are cleaned up
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "bearish", "1": "bullish", "2": "neutral"}
    assert config["label2id"] == {"bearish": 0, "bullish": 1, "neutral": 2}

    m = json.loads((out / "metrics.json").read_text())
    assert m["rows"]["read"] == 93 and m["rows"]["used"] == 90
    assert m["rows"]["skipped"] == {
        "null_text": 1,
        "empty_text": 1,
        "null_label": 1,
        "duplicate": 0,
        "conflicting_label": 0,
    }
    assert m["rows"]["split"] == {"train": 72, "validation": 9, "test": 9}
    assert m["data"]["fingerprint"].startswith("sha256:")
    assert m["hyperparameters"]["epochs"] == 1 and m["hyperparameters"]["seed"] == 3
    assert m["hyperparameters"]["max_length"] == 16 and m["max_length"] == 16
    assert m["base_model"] == str(tiny_checkpoint)
    # Web addresses are one token in the saved tokenizer, so every later stage reads
    # them the same way.
    assert m["hyperparameters"]["normalize_urls"] is True
    assert normalizes_urls(json.loads((out / "tokenizer.json").read_text())["normalizer"])
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(out).tokenize("Up 5% https://t.co/AbC1x.")
    assert tokens[-2:] == ["http", "."]
    assert m["device"]["device"] == "cpu"
    assert 0 < m["train_time_s"] <= m["total_time_s"]
    test = m["test"]
    assert test["n"] == 9 and set(test["per_class"]) == {"bearish", "bullish", "neutral"}
    assert sum(map(sum, test["confusion_matrix"])) == 9
    assert {"accuracy", "macro_f1", "majority_baseline"} <= set(test)

    # The recorded test rows are real input rows, three per class, with label names.
    con = duckdb.connect(market_db, read_only=True)
    split = con.execute(
        f"SELECT s.text, s.label, p.tag FROM '{out / 'test_split.parquet'}' s "
        "LEFT JOIN posts p ON p.body = s.text AND p.tag IS NOT NULL"
    ).fetchall()
    assert len(split) == 9 and all(label == tag for _, label, tag in split)
    assert (
        sorted(label for _, label, _ in split)
        == ["bearish"] * 3 + ["bullish"] * 3 + ["neutral"] * 3
    )
    assert "macro avg" in result.output and "test set: 9 rows" in result.output

    # What export and evaluate read back through the checkpoint contract.
    checkpoint = load_checkpoint(out)
    assert checkpoint.labels == ("bearish", "bullish", "neutral")
    assert checkpoint.max_length == 16 and checkpoint.base_model == str(tiny_checkpoint)
    assert checkpoint.metrics == m
    texts, labels = read_test_split(checkpoint)
    assert sorted(zip(texts, labels, strict=True)) == sorted((t, lab) for t, lab, _ in split)
    # The validation rows (export calibrates int8 on them): the split's 9, none a test row.
    val_texts, val_labels = read_validation_split(checkpoint)
    assert len(val_texts) == 9 and sorted(val_labels) == sorted(labels)
    assert not set(val_texts) & set(texts)


def test_same_seed_gives_the_same_test_split(trained, market_db, tiny_checkpoint, tmp_path):
    out, _ = trained
    again = tmp_path / "again"
    result = CliRunner().invoke(main, train_args(market_db, again, tiny_checkpoint, "--seed", "3"))
    assert result.exit_code == 0, result.output
    first = duckdb.sql(f"SELECT * FROM '{out / 'test_split.parquet'}' ORDER BY ALL").fetchall()
    second = duckdb.sql(f"SELECT * FROM '{again / 'test_split.parquet'}' ORDER BY ALL").fetchall()
    assert first == second
    # a rerun into an earlier training's --out replaces it whole, and says so once done
    (again / "pytorch_model.bin").write_bytes(b"an earlier save's weights")
    rerun = CliRunner().invoke(main, train_args(market_db, again, tiny_checkpoint, "--seed", "4"))
    assert rerun.exit_code == 0, rerun.output
    lines = rerun.output.splitlines()
    replaced = lines.index(f"--out {again} holds an earlier training: this one replaces it")
    assert replaced > next(i for i, line in enumerate(lines) if line.startswith("read 93 rows"))
    assert json.loads((again / "metrics.json").read_text())["hyperparameters"]["seed"] == 4
    assert not (again / "pytorch_model.bin").exists()  # nothing of the earlier run is mixed in
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no staging directory left
    # published like a directory made with mkdir, not with mkdtemp's 0700
    os.mkdir(tmp_path / "plain")
    assert stat.S_IMODE(again.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    (tmp_path / "plain" / "f").write_text("x")  # and its files like a file made with open
    file_mode = stat.S_IMODE((tmp_path / "plain" / "f").stat().st_mode)
    assert {stat.S_IMODE(p.stat().st_mode) for p in again.iterdir()} == {file_mode}


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("failure", ["base-model-without-weights", "interrupted", "tune-fails"])
def test_a_failed_run_leaves_the_earlier_training_untouched(
    failure, trained, market_db, tiny_checkpoint, tmp_path, monkeypatch
):
    """A run that fails, even after its splits were written, or is interrupted leaves
    --out's earlier training byte for byte as it was, and nothing beside it."""
    from marketpulse.train import trainer, tune

    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "model"
    shutil.copytree(trained[0], out)
    before = _snapshot(out)
    base, extra = tiny_checkpoint, []
    if failure == "base-model-without-weights":
        base = tmp_path / "noweights"
        shutil.copytree(tiny_checkpoint, base, ignore=shutil.ignore_patterns(*WEIGHTS))
    else:

        def failing_fine_tune(cfg, data, work, callbacks=()):
            assert (work.parent / "test_split.parquet").is_file()  # the splits are written
            if failure == "interrupted":
                raise KeyboardInterrupt
            raise MarketpulseError("the trial failed")

        monkeypatch.setattr(trainer, "fine_tune", failing_fine_tune)
        monkeypatch.setattr(tune, "fine_tune", failing_fine_tune)
        if failure == "tune-fails":
            pytest.importorskip("optuna")
            extra = ["--tune", "--tune-trials", "1", "--tune-max-epochs", "1"]
    args = train_args(market_db, out, base, *extra, small=failure != "tune-fails")
    result = CliRunner().invoke(main, args)
    # Ctrl-C exits 130, as the shell's convention and `score` have it
    assert result.exit_code == (130 if failure == "interrupted" else 1), result.output
    assert _snapshot(out) == before
    assert [p.name for p in runs.iterdir()] == ["model"]  # no staging directory left
    load_checkpoint(out)  # still the earlier, whole checkpoint
    assert "holds an earlier training" not in result.output
    last = result.output.strip().splitlines()[-1]
    if failure == "base-model-without-weights":
        assert result.output.strip().splitlines() == [last]  # one line, no traceback
        assert "has no model weights" in last and "save_pretrained(DIR)" in last
    elif failure == "interrupted":
        assert last == "marketpulse: interrupted"
    else:
        assert last == "Error: the trial failed"


def test_evaluate_on_the_test_split_reproduces_training_metrics(trained, tmp_path):
    out, _ = trained
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model",
            str(out),
            "--input",
            str(out / "test_split.parquet"),
            "--out",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(report.read_text())
    trained_test = json.loads((out / "metrics.json").read_text())["test"]
    assert saved["metrics"]["confusion_matrix"] == trained_test["confusion_matrix"]
    assert saved["metrics"]["macro_f1"] == pytest.approx(trained_test["macro_f1"])
    assert saved["kind"] == "checkpoint" and saved["max_length"] == 16
    assert "confusion matrix" in result.output


def test_evaluate_names_integer_labels_by_the_model(trained, market_db, tmp_path):
    out, _ = trained
    report = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(out), "--db", market_db, "--table", "posts"]
    args += ["--text-col", "body", "--label-col", "tag_id", "--out", str(report), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = json.loads(report.read_text())
    assert saved == json.loads(result.stdout)
    assert saved["rows"] == {
        "read": 93,
        "used": 90,
        "skipped": {"null_text": 1, "empty_text": 1, "null_label": 1},
    }
    assert [
        saved["metrics"]["per_class"][k]["support"] for k in ("bearish", "bullish", "neutral")
    ] == [30, 30, 30]


def test_evaluate_scores_a_bundle_variant(tiny_bundle, market_db, tmp_path):
    report = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(tiny_bundle.path), "--variant", "fp32", "--db", market_db]
    args += ["--table", "posts", "--text-col", "body", "--label-col", "tag", "--out", str(report)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = json.loads(report.read_text())
    assert saved["kind"] == "bundle" and saved["variant"] == "fp32"
    assert saved["model_version"] == tiny_bundle.version
    assert saved["metrics"]["n"] == 90


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--table", "news"], 1, "table 'news' not found"),
        (["--text-col", "txt"], 1, "column 'txt' not found in table 'posts'"),
        (["--label-col", "tagg"], 1, "pass --label-col with one of them"),
        (["--label-names", "bearish,bullish"], 1, "label 'neutral' in column 'tag' is not among"),
        (["--split", "0.8,0.2"], 1, "--split '0.8,0.2' is not three positive"),
        (["--base-model", "/nonexistent"], 1, "base model directory /nonexistent not found"),
    ],
)
def test_train_errors_name_the_fix(extra, code, message, market_db, tiny_checkpoint, tmp_path):
    out = tmp_path / "model"
    args = train_args(market_db, out, tiny_checkpoint)
    flag, value = extra
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += extra
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback
    assert not out.exists()


def test_train_refuses_an_out_that_holds_other_files(market_db, tiny_checkpoint, tmp_path):
    """Train writes config.json, weights and tokenizer files into --out: a directory that
    is not an earlier training's (a base model, a home folder) is refused before any work."""
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")  # e.g. another model's checkpoint
    result = CliRunner().invoke(main, train_args(market_db, foreign, tiny_checkpoint))
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"Error: --out {foreign} is not empty and holds no earlier `marketpulse train` output "
        "(no metrics.json with a checkpoint format); pass a new or empty directory"
    ]
    assert [p.name for p in foreign.iterdir()] == ["config.json"]
    assert (foreign / "config.json").read_text() == "{}"

    a_file = tmp_path / "model.txt"
    a_file.write_text("x")
    with pytest.raises(MarketpulseError, match="model.txt is a file; pass a directory path"):
        check_train_out(a_file)  # the Python API's check; the CLI's click.Path refuses first


@pytest.mark.parametrize(
    "files",
    [
        {"test_split.parquet": b"PAR1 rows", "thesis.docx": b"a user's own file"},
        {"metrics.json": b"not json", "thesis.docx": b"a user's own file"},
        {"metrics.json": b'{"test": {}}', "thesis.docx": b"a user's own file"},
    ],
)
def test_train_refuses_a_folder_that_only_looks_trained(
    files, market_db, tiny_checkpoint, tmp_path
):
    """What train writes (metrics.json with the checkpoint format), not one file of it,
    marks an earlier training that a new one may replace."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    result = CliRunner().invoke(main, train_args(market_db, folder, tiny_checkpoint))
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"Error: --out {folder} is not empty and holds no earlier `marketpulse train` "
        "output (no metrics.json with a checkpoint format); pass a new or empty directory"
    ]
    assert _snapshot(folder) == files


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("tag = 'bullish'", "has 1 distinct label(s)"),
        ("tag <> 'neutral' OR id < 62", "label 'neutral' has only 2 usable rows"),
    ],
)
def test_train_refuses_untrainable_labels(where, message, market_db, tiny_checkpoint, tmp_path):
    out = tmp_path / "model"
    args = train_args(market_db, out, tiny_checkpoint)
    i = args.index("--table")
    args[i : i + 2] = ["--query", f"SELECT * FROM posts WHERE {where}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "x"], "exactly one of --table, --query or --input"),
        (["--out", "x", "--table", "posts"], "--table needs --db"),
        (["--out", "x", "--input", "a.csv", "--db", "a.duckdb"], "--input reads a file"),
        (["--out", "x", "--table", "t", "--query", "SELECT 1"], "exactly one of"),
    ],
)
def test_bad_flag_combinations_are_usage_errors(args, message):
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_evaluate_errors(trained, market_db, tmp_path):
    out, _ = trained
    base = [
        "evaluate",
        "--db",
        market_db,
        "--table",
        "posts",
        "--text-col",
        "body",
        "--label-col",
        "tag",
    ]
    result = CliRunner().invoke(main, [*base, "--model", str(out), "--variant", "int8"])
    assert result.exit_code == 1 and "--variant applies to exported bundles" in result.output
    result = CliRunner().invoke(main, [*base, "--model", str(tmp_path)])
    assert result.exit_code == 1 and "neither a checkpoint" in result.output
    result = CliRunner().invoke(main, [*base, "--model", str(out), "--label-names", "up,down"])
    assert result.exit_code == 1 and "not among the label names" in result.output


def test_early_stopping_and_class_weights(market_db, tiny_checkpoint, tmp_path):
    # A learning rate this small cannot move validation macro-F1, so with patience 1
    # training stops after the second epoch instead of running all five.
    out = tmp_path / "model"
    args = train_args(market_db, out, tiny_checkpoint)
    args[args.index("--epochs") + 1] = "5"
    args += ["--patience", "1", "--learning-rate", "1e-12", "--class-weights", "--keep-urls"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["validation"]["epochs_run"] == pytest.approx(2.0)
    assert m["validation"]["stopped_early"] is True
    assert [e["epoch"] for e in m["validation"]["curve"]] == [1.0, 2.0]
    assert m["validation"]["best_epoch"] == 1.0  # nothing improved after the first
    assert m["train_rows_per_s"] > 0
    assert "validation by epoch (stopped early; kept epoch 1)" in result.output
    assert m["hyperparameters"]["class_weights"] is True
    assert m["hyperparameters"]["early_stopping_patience"] == 1
    assert m["hyperparameters"]["normalize_urls"] is False
    assert not normalizes_urls(json.loads((out / "tokenizer.json").read_text())["normalizer"])


def test_precision_follows_the_cpu(monkeypatch):
    from marketpulse import cpu
    from marketpulse.errors import MarketpulseError
    from marketpulse.train.predict import resolve_device

    monkeypatch.setattr(cpu, "flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert resolve_device("cpu")[:2] == ("cpu", "bf16")
    assert resolve_device("cpu", "fp32")[:2] == ("cpu", "fp32")
    monkeypatch.setattr(cpu, "flags", lambda: frozenset({"avx2"}))
    assert resolve_device("cpu")[:2] == ("cpu", "fp32")
    with pytest.raises(MarketpulseError, match="needs a CPU with AVX512-BF16 or AMX"):
        resolve_device("cpu", "bf16")


def test_train_speed_tool_refuses_an_unknown_mode(tmp_path):
    from marketpulse.tools import train_speed

    result = CliRunner().invoke(train_speed.main, ["--modes", "fp32,fp8", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "unknown mode(s) fp8" in result.output
    result = CliRunner().invoke(train_speed.main, ["--modes", "fp32", "--data", str(tmp_path)])
    assert result.exit_code == 1 and "train.csv not found" in result.output
