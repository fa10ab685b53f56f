"""Shared fixtures: a tiny BERT classifier for structural tests, real-data locations."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TWITTER = SHARED_DATA / "twitter_financial_news"
AMAZON = SHARED_DATA / "amazon_review_snippets"
TINY_LABELS = ["bearish", "bullish", "neutral"]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """`score --variant auto` caches graph timings; tests keep them out of ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MARKETPULSE_CACHE", str(tmp_path_factory.mktemp("marketpulse-cache")))
    yield
    mp.undo()


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, hidden-32 BERT classifier with the real tokenizer."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from marketpulse.train.basemodel import default_base_model_dir

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(default_base_model_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=len(TINY_LABELS),
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported by `marketpulse.export.run` (fp32, int8, fp16 graphs).

    Read-only: tests that corrupt a bundle copy it first.
    """
    pytest.importorskip("optimum.onnxruntime")
    from marketpulse.export import ExportConfig, run

    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    # A random tiny model has near-tied logits, so int8 may flip a few argmaxes; the
    # gate is tested on its own, this fixture only needs a loadable bundle.
    return run(
        ExportConfig(
            model=tiny_checkpoint,
            out=out,
            variants=("fp32", "int8", "fp16"),
            allow_accuracy_drop=True,
        )
    )
