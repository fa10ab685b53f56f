"""Predictor: placement rules, probabilities, parity with the PyTorch checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import spread_bundle

from marketpulse.bundle import load_bundle
from marketpulse.errors import MarketpulseError
from marketpulse.inference.batching import pad, plan_batches
from marketpulse.inference.predictor import (
    CPU,
    Predictor,
    choose_placement,
    cuda_provider_available,
    default_session_options,
)

TEXTS = [
    "Shares of $AAPL fell 4% after weak guidance",
    "Tesla beats delivery estimates, stock jumps",
    "Fed holds rates steady",
    "word " * 400,
    "ok",
]


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle):
    return tiny_bundle.path


def test_cpu_default_is_int8_and_probabilities_sum_to_one(bundle_dir):
    predictor = Predictor(load_bundle(bundle_dir), threads=1)
    assert (predictor.variant, predictor.provider) == ("int8", CPU)
    probs = predictor.predict_proba(TEXTS)
    assert probs.dtype == np.float32 and probs.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert "int8" in predictor.describe() and "--device cpu" in predictor.describe()


def test_session_options_replace_the_runtime_defaults(bundle_dir, tmp_path):
    opts = default_session_options()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "profile")
    predictor = Predictor(bundle_dir, threads=1, session_options=opts)
    predictor.predict_proba(TEXTS[:2])
    profile = Path(predictor.session.end_profiling())  # "" when profiling is off
    assert profile.parent == tmp_path and profile.name.startswith("profile")
    events = json.loads(profile.read_text())
    assert any(e.get("cat") == "Node" for e in events)  # the run's kernels were timed
    assert Predictor(bundle_dir, threads=1).session.end_profiling() == ""


def test_fp32_graph_matches_pytorch(bundle_dir, tiny_checkpoint):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    bundle = load_bundle(bundle_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    enc = tokenizer(
        TEXTS, padding=True, truncation=True, max_length=bundle.max_length, return_tensors="pt"
    )
    with torch.no_grad():
        expected = torch.softmax(model(**enc).logits, dim=-1).numpy()
    got = Predictor(bundle, variant="fp32").predict_proba(TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_order_is_kept_whatever_the_batching(bundle_dir):
    predictor = Predictor(bundle_dir, variant="fp32")
    texts = [f"{'market ' * (i % 37)}rally number {i}" for i in range(150)]
    one_by_one = np.vstack([predictor.predict_proba([t]) for t in texts])
    batched = predictor.predict_proba(texts, batch_tokens=300)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_device_cuda_without_provider_is_an_error(bundle_dir):
    if cuda_provider_available():
        pytest.skip("this machine has a CUDA provider")
    with pytest.raises(MarketpulseError, match="--device cuda.*no CUDA provider.*--device cpu"):
        Predictor(bundle_dir, device="cuda")


def test_device_auto_falls_back_to_cpu_and_says_so(bundle_dir):
    if cuda_provider_available():
        pytest.skip("this machine has a CUDA provider")
    placement = choose_placement(load_bundle(bundle_dir), "auto")
    assert (placement.device, placement.variant) == ("cpu", "int8")
    assert "no CUDA provider" in placement.reason and "using CPU" in placement.reason


def test_missing_variant_names_what_the_bundle_has(tiny_checkpoint, tmp_path_factory):
    fp32_int8 = spread_bundle(tiny_checkpoint, tmp_path_factory)
    with pytest.raises(MarketpulseError, match=r"no 'fp16' graph \(has: fp32, int8\)"):
        Predictor(fp32_int8, variant="fp16")


def test_plan_batches_respects_token_budget_and_covers_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 128, size=1000)
    batches = plan_batches(lengths, batch_tokens=1024, max_rows=64)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    for idx in batches:
        assert len(idx) <= 64
        assert len(idx) == 1 or len(idx) * lengths[idx].max() <= 1024


def test_pad_builds_mask():
    ids, mask = pad([np.array([101, 5, 102]), np.array([101, 102])], pad_id=0)
    assert ids.tolist() == [[101, 5, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_encoded_batch_pads_like_pad_and_arrow_input_encodes_like_a_list(bundle_dir):
    import pyarrow as pa

    encoder = Predictor(bundle_dir).encoder
    texts = [*TEXTS, "x" * (encoder._clip + 10), "é" * (encoder._clip + 1)]
    encoded = encoder.encode(texts)
    from_arrow = encoder.encode(pa.array(texts))
    for name in ("flat", "lengths", "truncated"):
        assert getattr(from_arrow, name).tolist() == getattr(encoded, name).tolist()
    assert encoded.truncated.tolist() == [False, False, False, True, False, True, True]
    # the flat ids are the tokenizer's own, row by row
    reference = encoder._tok.encode_batch(texts)
    assert [row.tolist() for row in encoded.ids][:5] == [e.ids for e in reference][:5]
    rows = np.array([4, 0, 3, 2])
    for pad_id in (0, 7):
        ids, mask = encoded.batch(rows, pad_id)
        want_ids, want_mask = pad([encoded.ids[i] for i in rows], pad_id)
        assert ids.dtype == mask.dtype == np.int64
        assert ids.tolist() == want_ids.tolist() and mask.tolist() == want_mask.tolist()
