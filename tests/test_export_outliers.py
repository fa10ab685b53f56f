"""export/outliers.py: splitting the widest FFN channels off in float is exact in float."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from marketpulse.errors import MarketpulseError
from marketpulse.export.outliers import (
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


@pytest.fixture(scope="module")
def rewritten(tiny_bundle, tmp_path_factory):
    """(channel ranges, fp32 weights, the rewritten graph, its weights) of the tiny bundle."""
    fp32 = tiny_bundle.variant_path("fp32")
    calibration = Calibration(tiny_bundle.tokenizer_path, tiny_bundle.max_length, TEXTS)
    ranges = channel_ranges(fp32, calibration)
    split = split_outlier_channels(fp32, tmp_path_factory.mktemp("split"), calibration)
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(fp32)).graph.initializer}
    graph = onnx.load(str(split)).graph
    after = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return ranges, before, graph, after


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


def test_the_widest_channels_are_the_float_ones(rewritten):
    ranges, before, graph, after = rewritten
    outlier_nodes = [n for n in graph.node if n.name.endswith(OUTLIER_SUFFIX)]
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


def test_layernorm_outputs_are_smoothed_into_the_weights(rewritten):
    """Each Q/K/V/FFN1 MatMul reads its LayerNorm output divided per channel, and its weight
    rows carry the same factors back; the widest channels are the most divided."""
    ranges, before, graph, after = rewritten
    smooths = [n for n in graph.node if n.name.endswith("_smooth")]
    assert len(smooths) == 4  # 2 layers: Q/K/V read one LayerNorm output, FFN1 another
    for mul in smooths:
        x, inverse = mul.input
        readers = [n for n in graph.node if n.op_type == "MatMul" and n.input[0] == mul.output[0]]
        assert len(readers) in (1, 3)
        for mm in readers:
            if "/attention/self/" in mm.name:  # not permuted by the FFN split
                np.testing.assert_allclose(
                    after[mm.input[1]] * after[inverse][:, None], before[mm.input[1]], rtol=1e-5
                )
        shrunk = ranges[x] * after[inverse]
        assert shrunk.max() / np.median(shrunk) < ranges[x].max() / np.median(ranges[x])
