"""Keep the few widest-ranged channels out of int8, so every weight MatMul can be int8.

Static int8 gives each activation tensor one scale, calibrated at export. The input of a BERT
layer's FFN output projection (`layer.N/output/dense`, the GELU output) has a handful
of channels far wider than the rest: on the fine-tuned twitter MiniLM (1,536 channels,
512 training tweets) the widest reached 24.8, 20.4, 17.6, 13.8 in layers 0-3 while the
99th percentile of the channels stayed near 5. One uint8 scale then spends most of its
256 steps on those few channels. Quantizing every weight MatMul agreed with PyTorch on
98.83% of valid.csv; this rewrite makes it 99.3% at ~95% of the fully-int8 speed
(figures measured with dynamic int8, whose per-batch scale the outliers set the same way).

The rewrite is exact in float and happens on the fp32 graph before quantization:

1. measure each FFN channel's largest |value| on calibration texts (export's check texts,
   or the --check-source sample), the same texts that set the static scales,
2. permute the FFN's intermediate channels so the `k` widest come last; the permutation
   is folded into the weights (FFN1 columns and bias, FFN2 rows), so it costs nothing,
3. split FFN2 into MatMul(x[..., :-k], W2[:-k]) + MatMul(x[..., -k:], W2[-k:]).

The quantizer makes the first MatMul int8 (its activation scale no longer set by the
outliers); the second, named `<FFN2>_outliers`, stays float32 (`k` x hidden weights).

The LayerNorm outputs that feed Q, K, V and FFN1 have such channels too (channel 99 of
every attention LayerNorm of the MiniLM reached 21-30, the median channel ~2); the
hidden size is the residual stream every layer shares, so it is not permuted: those
MatMuls read `x / s` with `s` folded into their weights (SmoothQuant,
`_smooth_normalized_inputs`). Measured (static int8, 2026-12-02, each bundle's int8
against its own fp32 graph): the twitter model on valid.csv 98.99% before, 99.54% after;
the reviews model on its test split 97.84% -> 99.73%, on tweets 96.64% -> 98.35%. A
float split of the 8 widest channels instead agreed a little more (99.71%, 100%,
98.51%) but cost ~13% of int8 speed; smoothing costs one Mul per LayerNorm output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marketpulse.errors import MarketpulseError
from marketpulse.text import is_blank

OUTLIER_CHANNELS = 32  # per layer; at most 1/16 of the FFN width
CALIBRATION_ROWS = 512
# Fewer check texts than this to spare for calibration and export calibrates on the
# checkpoint's validation split instead (stage.calibration_source). Measured 2026-12-03
# (demo MiniLM, 2 AVX2 cores: int8 calibrated on N train.csv tweets, 3 draws each, against
# its fp32 graph on 1,200 valid.csv tweets, one standard error ~0.35 points): N=1
# 95.2-96.1%, 4 97.7-98.0%, 16 98.2-98.8%, 64 98.7-98.9%, 256 98.1-98.4%, 512 98.4-98.7%.
# The static ranges settle by 16-32 texts; 64 leaves a margin for less uniform text.
MIN_CALIBRATION_ROWS = 64
OUTLIER_SUFFIX = "_outliers"
SMOOTH_ALPHA = 0.75  # how much of a LayerNorm output's channel range moves into the weights
FFN_OUTPUT = re.compile(r"/layer\.(\d+)/output/dense/MatMul$")


@dataclass(frozen=True)
class Calibration:
    """Texts whose activation ranges pick the float channels and set int8's static scales.

    Tokenized as the runtime does; the first CALIBRATION_ROWS non-blank texts are used.
    """

    tokenizer: Path
    max_length: int
    texts: list[str]

    def used(self) -> list[str]:
        """The texts calibration runs on; raise when there are none."""
        texts = [t for t in self.texts if t is not None and not is_blank(t)][:CALIBRATION_ROWS]
        if not texts:
            raise MarketpulseError(
                "no calibration texts for int8 (the check texts are all empty); re-run "
                "`marketpulse train`, whose validation split export calibrates on"
            )
        return texts

    def feeds(self, inputs: set[str], max_rows: int = 64) -> list[dict[str, np.ndarray]]:
        """Model feeds for the texts, each batch of rows that share one exact token length.

        No row is padded, so every activation seen is a real token's: padded positions
        would widen the static int8 ranges with values the runtime's masked rows never use.
        """
        from marketpulse.inference.batching import TextEncoder

        encoder = TextEncoder(self.tokenizer, self.max_length)
        encoded = encoder.encode(self.used())
        out = []
        for length in np.unique(encoded.lengths):
            rows = np.flatnonzero(encoded.lengths == length)
            for start in range(0, len(rows), max_rows):
                ids, mask = encoded.batch(rows[start : start + max_rows], encoder.pad_id)
                feeds = {"input_ids": ids, "attention_mask": mask}
                if "token_type_ids" in inputs:
                    feeds["token_type_ids"] = np.zeros_like(ids)
                out.append(feeds)
        return out


@dataclass(frozen=True)
class _Ffn:
    layer: int
    ffn1: object  # onnx NodeProto: the intermediate (up) projection MatMul
    bias: str  # initializer name of FFN1's bias
    ffn2: object  # onnx NodeProto: the output (down) projection MatMul


def _ffns(graph) -> list[_Ffn]:
    """Each layer's FFN: FFN2 by name, FFN1 by name in the same layer, FFN1's bias Add."""
    constants = {t.name for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in graph.node:
        match = FFN_OUTPUT.search(node.name)
        if node.op_type != "MatMul" or not match or node.input[1] not in constants:
            continue
        layer = int(match.group(1))
        up_name = f"/layer.{layer}/intermediate/dense/MatMul"
        up = [n for n in graph.node if n.op_type == "MatMul" and n.name.endswith(up_name)]
        if len(up) != 1 or up[0].input[1] not in constants:
            continue
        bias = [
            i
            for n in consumers.get(up[0].output[0], [])
            if n.op_type in ("Add", "BiasGelu")
            for i in n.input
            if i in constants
        ]
        if len(bias) == 1:
            found.append(_Ffn(layer, up[0], bias[0], node))
    return found


def _normalized_inputs(graph) -> dict[str, list]:
    """{LayerNorm output: the weight MatMuls reading it} (each layer's Q/K/V and FFN1)."""
    constants = {t.name for t in graph.initializer}
    norms = {
        n.output[0]
        for n in graph.node
        if n.op_type in ("LayerNormalization", "SkipLayerNormalization")
    }
    found: dict[str, list] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[0] in norms and node.input[1] in constants:
            found.setdefault(node.input[0], []).append(node)
    return found


def channel_ranges(model: Path, calibration: Calibration) -> dict[str, np.ndarray]:
    """Largest |value| per channel of each FFN2 input and of each LayerNorm output that
    feeds weight MatMuls, over the texts' tokens (none padded)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(model))
    names = [f.ffn2.input[0] for f in _ffns(proto.graph)]
    names += list(_normalized_inputs(proto.graph))
    for name in names:
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    inputs = {i.name for i in session.get_inputs()}
    ranges: dict[str, np.ndarray] = {}
    for feeds in calibration.feeds(inputs):
        for name, value in zip(names, session.run(names, feeds), strict=True):
            widest = np.abs(value).max(axis=(0, 1))
            ranges[name] = np.maximum(ranges[name], widest) if name in ranges else widest
    return ranges


def split_outlier_channels(model: Path, out_dir: Path, calibration: Calibration) -> Path:
    """Write `model` with each FFN2 split into a wide int8-able part and a float part."""
    import onnx
    from onnx import helper, numpy_helper

    ranges = channel_ranges(model, calibration)
    proto = onnx.load(str(model))
    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}

    def replace(name: str, array: np.ndarray) -> None:
        weights[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))

    added: dict[str, tuple[list, list]] = {}  # FFN2 name -> (nodes before, nodes after)
    for ffn in _ffns(graph):
        x, w2_name = ffn.ffn2.input[0], ffn.ffn2.input[1]
        w2 = numpy_helper.to_array(weights[w2_name])
        width = w2.shape[0]
        k = min(OUTLIER_CHANNELS, max(1, width // 16))
        order = np.argsort(ranges[x], kind="stable")  # widest last
        replace(ffn.ffn1.input[1], numpy_helper.to_array(weights[ffn.ffn1.input[1]])[:, order])
        replace(ffn.bias, numpy_helper.to_array(weights[ffn.bias])[order])
        w2 = w2[order]
        replace(w2_name, w2[: width - k])
        name = ffn.ffn2.name
        outlier_w = w2_name + OUTLIER_SUFFIX
        sizes = name + "_split_sizes"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(w2[width - k :]), outlier_w),
                numpy_helper.from_array(np.array([width - k, k], np.int64), sizes),
            ]
        )
        x_main, x_out = x + "_main", x + OUTLIER_SUFFIX
        y = ffn.ffn2.output[0]
        y_main, y_out = y + "_main", y + OUTLIER_SUFFIX
        split = helper.make_node(
            "Split", [x, sizes], [x_main, x_out], axis=-1, name=name + "_split"
        )
        outliers = helper.make_node(
            "MatMul", [x_out, outlier_w], [y_out], name=name + OUTLIER_SUFFIX
        )
        total = helper.make_node("Add", [y_main, y_out], [y], name=name + "_sum")
        ffn.ffn2.input[0], ffn.ffn2.output[0] = x_main, y_main
        added[name] = ([split], [outliers, total])
    if not added:
        raise MarketpulseError(
            f"found no BERT FFN layers in {model} to calibrate; export a BERT-family checkpoint"
        )
    after_norm = _smooth_normalized_inputs(graph, weights, ranges)
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        before, after = added.get(node.name, ([], []))
        graph.node.extend([*before, node, *after, *after_norm.get(node.output[0], [])])
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out_dir / model.name))
    if (model.parent / "config.json").is_file():  # optimum's quantizer reads it
        (out_dir / "config.json").write_bytes((model.parent / "config.json").read_bytes())
    return out_dir / model.name


def _smooth_normalized_inputs(graph, weights, ranges) -> dict[str, list]:
    """Shrink each LayerNorm output's wide channels before its weight MatMuls, in the weights.

    A LayerNorm output (the input of Q, K, V and FFN1) has a few channels far wider than
    the rest: on the reviews MiniLM, channel 99 of every attention LayerNorm reached 21-30
    while the median channel stayed near 2. SmoothQuant (Xiao et al. 2023) moves that
    range into the weights: the MatMuls read `x / s` and their weight rows are multiplied
    by `s`, `s_j = max|x_j|^a / max|W_j|^(1-a)` (a = SMOOTH_ALPHA, over the MatMuls
    sharing `x`, normalized to a median of 1). Exact in float; the hidden size is the
    residual stream every layer shares, so `x` itself is untouched and one Mul per
    LayerNorm output does the division. Returns {LayerNorm output: nodes after it}.
    """
    from onnx import helper, numpy_helper

    after_norm: dict[str, list] = {}
    for x, matmuls in _normalized_inputs(graph).items():
        ws = [numpy_helper.to_array(weights[mm.input[1]]) for mm in matmuls]
        w_range = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        scale = np.maximum(ranges[x], 1e-5) ** SMOOTH_ALPHA
        scale = scale / np.maximum(w_range, 1e-5) ** (1 - SMOOTH_ALPHA)
        scale = (scale / np.median(scale)).astype(np.float32)
        x_main = x + "_smoothed"
        graph.initializer.append(numpy_helper.from_array(1.0 / scale, x + "_inverse_scale"))
        after_norm[x] = [
            helper.make_node("Mul", [x, x + "_inverse_scale"], [x_main], name=x + "_smooth")
        ]
        for mm, w in zip(matmuls, ws, strict=True):
            scaled = np.ascontiguousarray(w * scale[:, None])
            weights[mm.input[1]].CopyFrom(numpy_helper.from_array(scaled, mm.input[1]))
            mm.input[0] = x_main
    return after_norm
