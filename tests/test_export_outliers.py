"""export/outliers.py: splitting the widest FFN channels off in float is exact in float."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from marketpulse.errors import MarketpulseError
from marketpulse.export.outliers import (
    HIDDEN_SUFFIX,
    OUTLIER_SUFFIX,
    Calibration,
    channel_ranges,
    split_outlier_channels,
)
from marketpulse.inference.batching import TextEncoder, pad

TEXTS = [
    "Apple shares jump 5% after record iPhone sales",
    "Oil slides as OPEC output rises; energy stocks fall",
    "Fed holds rates steady, signals patience",
    "Retailer files for bankruptcy protection",
]


def _logits(model, bundle, texts):
    encoder = TextEncoder(bundle.tokenizer_path, bundle.max_length)
    ids, mask = pad(encoder.encode(texts).ids, encoder.pad_id)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in {i.name for i in session.get_inputs()}:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return session.run(None, feeds)[0]


def test_split_graph_computes_the_same_logits(tiny_bundle, tmp_path):
    fp32 = tiny_bundle.variant_path("fp32")
    calibration = Calibration(tiny_bundle.tokenizer_path, tiny_bundle.max_length, TEXTS)
    split = split_outlier_channels(fp32, tmp_path / "split", calibration)
    fresh = ["Tesla recalls 2 million cars", "Gold at record high; miners rally hard today"]
    np.testing.assert_allclose(
        _logits(split, tiny_bundle, fresh), _logits(fp32, tiny_bundle, fresh), atol=1e-5
    )


def test_the_widest_channels_are_the_float_ones(tiny_bundle, tmp_path):
    fp32 = tiny_bundle.variant_path("fp32")
    calibration = Calibration(tiny_bundle.tokenizer_path, tiny_bundle.max_length, TEXTS)
    ranges = channel_ranges(fp32, calibration)
    split = split_outlier_channels(fp32, tmp_path / "split", calibration)
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(fp32)).graph.initializer}
    graph = onnx.load(str(split)).graph
    after = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    outlier_nodes = [
        n
        for n in graph.node
        if n.name.endswith(OUTLIER_SUFFIX) and not n.name.endswith(HIDDEN_SUFFIX)
    ]
    assert len(outlier_nodes) == 2  # one per layer of the tiny model
    for node in outlier_nodes:
        main = next(n for n in graph.node if n.name == node.name.removesuffix(OUTLIER_SUFFIX))
        x = main.input[0].removesuffix("_main")
        w2 = before[main.input[1]]  # the original (width, hidden) weight, same name
        k = after[node.input[1]].shape[0]
        widest = np.argsort(ranges[x], kind="stable")[-k:]
        np.testing.assert_array_equal(after[node.input[1]], w2[widest])
        assert after[main.input[1]].shape[0] == w2.shape[0] - k


def test_no_calibration_texts_is_a_clear_error(tiny_bundle, tmp_path):
    calibration = Calibration(tiny_bundle.tokenizer_path, tiny_bundle.max_length, [])
    with pytest.raises(MarketpulseError, match="calibration texts"):
        split_outlier_channels(tiny_bundle.variant_path("fp32"), tmp_path / "s", calibration)


def test_the_widest_layernorm_channels_feed_their_matmuls_in_float(tiny_bundle, tmp_path):
    fp32 = tiny_bundle.variant_path("fp32")
    calibration = Calibration(tiny_bundle.tokenizer_path, tiny_bundle.max_length, TEXTS)
    ranges = channel_ranges(fp32, calibration)
    split = split_outlier_channels(fp32, tmp_path / "split", calibration)
    graph = onnx.load(str(split)).graph
    after = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    float_parts = [n for n in graph.node if n.name.endswith(HIDDEN_SUFFIX)]
    # the tiny model's 2 layers: Q, K, V read one LayerNorm output, FFN1 another
    assert len(float_parts) == 2 * 4
    for node in float_parts:
        main = next(n for n in graph.node if n.name == node.name.removesuffix(HIDDEN_SUFFIX))
        x = main.input[0].removesuffix("_main")
        k = after[node.input[1]].shape[0]
        widest = np.sort(np.argsort(ranges[x], kind="stable")[-k:])
        np.testing.assert_array_equal(after[x + "_idx"], widest)
        # the float part is exactly the main weight's rows of those channels (FFN1's
        # columns may be permuted by the FFN split: compare with the weight as written)
        np.testing.assert_array_equal(after[node.input[1]], after[main.input[1]][widest])
        assert set(np.flatnonzero(after[x + "_keep"] == 0)) == set(widest)
