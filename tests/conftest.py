"""Shared fixtures: a tiny BERT classifier for structural tests, a small labeled market
table for the train and adapt tests, real-data locations."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TWITTER = SHARED_DATA / "twitter_financial_news"
AMAZON = SHARED_DATA / "amazon_review_snippets"
TINY_LABELS = ["bearish", "bullish", "neutral"]
MARKET_WORDS = {
    "bearish": ["falls", "misses", "downgrade", "slump"],
    "bullish": ["rallies", "beats", "upgrade", "soars"],
    "neutral": ["reports", "schedules", "holds", "files"],
}


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


def _market_rows() -> list[tuple]:
    """(id, body, tag, tag_id): 90 distinct labeled posts, 30 per class, then three rows
    that neither train nor adapt uses: a NULL text, a blank one, and row 0's text again
    with no label (adapt counts it a duplicate, train a missing label)."""
    rows, i = [], 0
    for label_id, (label, words) in enumerate(MARKET_WORDS.items()):
        for n in range(30):
            rows.append((i, f"$T{n} {words[n % 4]} after quarter {n}", label, label_id))
            i += 1
    return rows + [
        (100, None, "bullish", 1),
        (101, " \t ", "bearish", 0),
        (102, rows[0][1], None, None),
    ]


@pytest.fixture(scope="module")
def market_db(tmp_path_factory) -> str:
    """A DuckDB file: posts(id, body, tag VARCHAR, tag_id INTEGER) as `_market_rows`, the
    same rows in reverse in posts_reversed, and blank_posts(id, body) with no usable text."""
    path = tmp_path_factory.mktemp("market") / "market.duckdb"
    con = duckdb.connect(str(path))
    for table, rows in (("posts", _market_rows()), ("posts_reversed", _market_rows()[::-1])):
        con.execute(f"CREATE TABLE {table} (id INTEGER, body VARCHAR, tag VARCHAR, tag_id INTEGER)")
        con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?)", rows)
    con.execute("CREATE TABLE blank_posts (id INTEGER, body VARCHAR)")
    con.executemany("INSERT INTO blank_posts VALUES (?, ?)", [(1, None), (2, ""), (3, "  ")])
    con.close()
    return str(path)


def train_args(db, out, base, *extra: str, small: bool = True) -> list[str]:
    """`marketpulse train` on market_db's posts, on the CPU at max length 16, then `extra`.

    `small` fixes one epoch of batch 8; `--tune` searches both, so tune tests pass False.
    """
    args = ["train", "--db", str(db), "--table", "posts", "--text-col", "body"]
    args += ["--label-col", "tag", "--out", str(out), "--base-model", str(base)]
    args += ["--max-length", "16", "--device", "cpu"]
    if small:
        args += ["--epochs", "1", "--batch-size", "8"]
    return [*args, *extra]
