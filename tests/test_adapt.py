"""`marketpulse adapt` on the tiny BERT: checkpoint + adapt.json, train from it, errors."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from conftest import train_args

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.train.adapt import HELDOUT_MIN, load_texts
from marketpulse.train.data import DataSource
from marketpulse.urls import normalizes_urls

torch = pytest.importorskip("torch")


def _adapt_args(db, out, base, *extra):
    return [
        "adapt",
        "--db",
        db,
        "--table",
        "posts",
        "--text-col",
        "body",
        "--out",
        str(out),
        "--base-model",
        str(base),
        "--max-length",
        "16",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        *extra,
    ]


@pytest.fixture(scope="module")
def adapted(market_db, tiny_checkpoint, tmp_path_factory):
    # A high rate so the tiny model's held-out loss measurably falls in 11 steps.
    out = tmp_path_factory.mktemp("adapt_run") / "adapted"
    args = _adapt_args(market_db, out, tiny_checkpoint, "--epochs", "1", "--learning-rate", "1e-2")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_adapt_writes_checkpoint_and_record(adapted, market_db):
    out, result = adapted
    for name in ("model.safetensors", "config.json", "tokenizer.json", "adapt.json"):
        assert (out / name).is_file(), name
    # the temp dir was renamed into place, nothing is left beside it
    assert [p.name for p in out.parent.iterdir()] == ["adapted"]
    # readable like files made with open (safetensors writes 0600, mkdtemp makes 0700)
    import stat

    plain = out.parent.parent / "plain_file"
    plain.write_text("x")
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {stat.S_IMODE(plain.stat().st_mode)}
    plain.unlink()
    record = json.loads((out / "adapt.json").read_text())
    assert record["rows"] == {
        "read": 93,
        "skipped": {"null_text": 1, "empty_text": 1, "duplicate": 1},
        "distinct": 90,
        "used": 90,
        "train": 90 - HELDOUT_MIN,
        "heldout": HELDOUT_MIN,
    }
    held = record["heldout"]
    assert held["texts"] == HELDOUT_MIN and held["masked_tokens"] > 0
    assert math.isfinite(held["loss_before"]) and math.isfinite(held["loss_after"])
    assert held["perplexity_after"] == pytest.approx(math.exp(held["loss_after"]), rel=1e-3)
    assert held["loss_after"] < held["loss_before"] - 0.5
    assert record["data"]["text_col"] == "body" and "posts" in record["data"]["source"]
    assert record["hyperparameters"]["epochs"] == 1.0
    # web addresses were one token while adapting, and stay so for train
    assert record["hyperparameters"]["normalize_urls"] is True
    assert normalizes_urls(json.loads((out / "tokenizer.json").read_text())["normalizer"])
    assert "loss" in result.output and "fine-tune it with" in result.output


def test_adapt_records_new_head_and_keeps_base_pooler(adapted, tiny_checkpoint):
    out, _ = adapted
    record = json.loads((out / "adapt.json").read_text())
    # a classifier checkpoint has no MLM head: transformers initialised it, and we say so
    assert "cls.predictions.transform.dense.weight" in record["newly_initialised"]
    assert record["tied_word_embeddings"] is True
    assert sorted(record["carried_from_base"]) == [
        "bert.pooler.dense.bias",
        "bert.pooler.dense.weight",
    ]
    base, new = _weights(tiny_checkpoint), _weights(out)
    # MLM never trains the pooler, so the classifier's starting pooler is the base's own
    for key in ("bert.pooler.dense.weight", "bert.pooler.dense.bias"):
        assert torch.equal(new[key], base[key]), key
    # ... while the encoder itself did train
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not new[key].equal(base[key])
    assert "cls.predictions.transform.dense.weight" in new


def test_train_starts_from_adapted_checkpoint(adapted, market_db, tiny_checkpoint, tmp_path):
    out, _ = adapted
    model = tmp_path / "model"
    # A rate this small leaves every weight where training found it, so the saved model
    # shows what `train` loaded. --keep-urls takes out the link replacement adapt put in.
    args = train_args(
        market_db, model, out, "--learning-rate", "1e-12", "--precision", "fp32", "--keep-urls"
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["base_model"] == str(out)
    assert not normalizes_urls(json.loads((model / "tokenizer.json").read_text())["normalizer"])
    base, adapted_weights, trained = _weights(tiny_checkpoint), _weights(out), _weights(model)
    # the pooler is the one adapt carried over from the base, not a fresh initialisation
    for key in ("bert.pooler.dense.weight", "bert.pooler.dense.bias"):
        assert torch.allclose(trained[key], adapted_weights[key], atol=1e-6), key
        assert torch.allclose(trained[key], base[key], atol=1e-6), key
    # ... and the encoder is the adapted one, not the base's
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(trained[key], adapted_weights[key], atol=1e-6)
    assert not torch.allclose(trained[key], base[key], atol=1e-6)


def test_sample_ignores_scan_order_and_follows_seed(market_db):
    def texts(table, seed, max_rows=None):
        source = DataSource(db=market_db, table=table, text_col="body")
        return load_texts(source, max_rows, seed).texts

    first = texts("posts", 1)
    assert len(first) == 90 and len(set(first)) == 90
    assert texts("posts_reversed", 1) == first
    assert texts("posts", 2) != first
    assert texts("posts", 1, max_rows=20) == first[:20]


def test_texts_from_a_csv_file(tmp_path):
    path = tmp_path / "posts.csv"
    path.write_text(
        "id,body\n" + "".join(f"{i},headline number {i}\n" for i in range(20)) + "20,\n"
    )
    rows = load_texts(DataSource(input=str(path), text_col="body"), None, 42)
    assert sorted(rows.texts) == sorted(f"headline number {i}" for i in range(20))
    assert rows.rows_read == 21 and rows.skipped["null_text"] == 1
    with pytest.raises(MarketpulseError, match=r"column 'text' not found in .*posts.csv"):
        load_texts(DataSource(input=str(path), text_col="text"), None, 42)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--table", "nope"], "table 'nope' not found"),
        (["--text-col", "text"], "column 'text' not found in table 'posts'"),
        (["--table", "blank_posts"], "has 0 usable distinct texts (of 3 rows: 1 NULL, 2 blank"),
    ],
)
def test_bad_input_is_one_line_error(market_db, tiny_checkpoint, tmp_path, extra, message):
    out = tmp_path / "adapted"
    result = CliRunner().invoke(main, _adapt_args(market_db, out, tiny_checkpoint) + extra)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_non_empty_out_is_refused_without_overwrite(market_db, tiny_checkpoint, tmp_path):
    out = tmp_path / "adapted"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, _adapt_args(market_db, out, tiny_checkpoint))
    assert result.exit_code == 1 and "is not empty" in result.output
    assert "or --overwrite" not in result.output  # it could not replace this folder
    # --overwrite replaces a checkpoint only, never an arbitrary directory
    result = CliRunner().invoke(main, _adapt_args(market_db, out, tiny_checkpoint, "--overwrite"))
    assert result.exit_code == 1 and "holds no checkpoint" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_a_checkpoint(market_db, tiny_checkpoint, tmp_path):
    out = tmp_path / "adapted"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "stale.bin").write_text("old")
    args = _adapt_args(market_db, out, tiny_checkpoint, "--overwrite", "--max-rows", "20")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert not (out / "stale.bin").exists() and (out / "model.safetensors").is_file()
    assert json.loads((out / "adapt.json").read_text())["rows"]["used"] == 20
    assert [p.name for p in tmp_path.iterdir()] == ["adapted"]


def test_a_crash_leaves_out_as_it_was(market_db, tiny_checkpoint, tmp_path, monkeypatch):
    import transformers

    def crash(self, *args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(transformers.Trainer, "train", crash)
    out = tmp_path / "adapted"
    out.mkdir()
    (out / "config.json").write_text("{}")
    args = _adapt_args(market_db, out, tiny_checkpoint, "--overwrite", "--max-rows", "16")
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, RuntimeError)
    # the previous checkpoint is untouched and no temp dir is left beside it
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapted"]
