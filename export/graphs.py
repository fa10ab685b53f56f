"""Make the ONNX graphs of a bundle: the fp32 export, its ORT optimization, int8, fp16.

Every function takes a graph file and writes a new one, so the stage can chain them
in the order that `marketpulse.tools.export_measure` found fastest on this CPU:

    export (optimum) -> optimize (ORT level) -> split outlier channels -> quantize int8
                                               (static: per-channel weights, per-tensor
                                                activation scales calibrated at export)
    export (optimum) -> transformers optimizer (model_type bert) -> float16 (fp32 I/O kept)

Nothing here talks to a model hub: the checkpoint is a local directory.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path

from marketpulse.errors import MarketpulseError, first_line
from marketpulse.export.outliers import OUTLIER_SUFFIX, Calibration, split_outlier_channels

OPTIMIZATION_LEVELS = ("none", "O1", "O2", "O3")
INT8_ORDERS = ("optimize-then-quantize", "quantize-then-optimize")
# CPU kinds an int8 graph can be quantized for (`quantization_config`); auto: the exporting CPU's
INT8_ISAS = ("auto", "avx512_vnni", "avx512", "avx2", "arm64")
DEFAULT_OPSET = 18
WEIGHT_OPS = ("MatMul", "Attention")
INT8_OPS = ("MatMul",)
CALIBRATION_METHOD = "MinMax"
# Each activation's range is the mean over calibration batches of each batch's min/max
# (ORT's CalibMovingAverage; unweighted, np.nanmean over the batches), not the extremes
# of all batches: one rare outlier batch no longer coarsens every row's scale.
# On the twitter MiniLM (README, Export) agreement with fp32 on its test split went
# from 98.95% to 99.16%, on 2,000 review snippets from 99.15% to 99.25%.
CALIBRATION_MOVING_AVERAGE = True
QUANT_FORMAT = "QDQ"


def export_fp32(checkpoint: Path, workdir: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the checkpoint with optimum; batch and sequence axes stay dynamic."""
    from optimum.exporters.onnx import main_export

    out = workdir / "optimum"
    try:
        with warnings.catch_warnings(), scratch_cwd(workdir / "scratch"):
            # torch.jit tracing warns about every constant it records; none are actionable here
            warnings.simplefilter("ignore")
            main_export(
                str(checkpoint),
                out,
                task="text-classification",
                opset=opset,
                local_files_only=True,
                library_name="transformers",
                # export.run checks parity itself, on real texts and with a tighter bound
                do_validation=False,
            )
    except (OSError, ValueError, KeyError) as exc:
        raise MarketpulseError(
            f"could not export {checkpoint} to ONNX ({exc}); pass --model with a checkpoint "
            "directory written by `marketpulse train`"
        ) from exc
    return out / "model.onnx"


def optimize(model: Path, level: str, out_dir: Path) -> Path:
    """Apply optimum's ORT optimization level offline; `none` copies the graph unchanged.

    O1 is ORT's basic level (constant folding, redundant node removal); O2 adds the
    transformer fusions (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization).
    """
    if level not in OPTIMIZATION_LEVELS:
        raise MarketpulseError(
            f"unknown optimization level {level!r}; pass one of {', '.join(OPTIMIZATION_LEVELS)}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if level == "none":
        return _copy_graph(model, out_dir)
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    optimizer = ORTOptimizer.from_pretrained(model.parent, file_names=[model.name])
    config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=False)
    with scratch_cwd(out_dir.parent / "scratch"):
        optimizer.optimize(config, save_dir=out_dir, file_suffix=None)
    return out_dir / model.name


def _copy_graph(model: Path, out_dir: Path) -> Path:
    """Copy a graph and the config.json beside it (optimum's tools read it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out_dir / model.name)
    if (model.parent / "config.json").is_file():
        shutil.copyfile(model.parent / "config.json", out_dir / "config.json")
    return out_dir / model.name


def quantization_config(isa: str, nodes: list[str] | None = None):
    """optimum's static, per-channel int8 config for `isa`, limited to `nodes` if given.

    VNNI computes u8*s8 in one instruction without saturating, so full range is safe;
    plain AVX2/AVX512 use VPMADDUBSW, whose int16 intermediate saturates, hence 7-bit
    `reduce_range`. Activations are uint8 with a zero point (asymmetric: GELU outputs
    and LayerNorm outputs are lopsided), weights int8 symmetric.
    """
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    kwargs = {"is_static": True, "per_channel": True}
    if nodes is not None:
        kwargs.update(nodes_to_quantize=nodes, operators_to_quantize=list(INT8_OPS))
    if isa == "avx512_vnni":
        return AutoQuantizationConfig.avx512_vnni(**kwargs)
    if isa == "avx512":
        return AutoQuantizationConfig.avx512(reduce_range=True, **kwargs)
    if isa == "arm64":
        return AutoQuantizationConfig.arm64(**kwargs)
    return AutoQuantizationConfig.avx2(reduce_range=True, **kwargs)


@contextlib.contextmanager
def scratch_cwd(directory: Path):
    """Run a tool with `directory` as the working directory.

    ORT's symbolic shape inference saves `sym_shape_infer_temp.onnx` plus a
    `<uuid>.data` file into the current directory when it gives up, so every
    ONNX tool runs inside the stage's temporary work folder. Paths handed to the
    tool must be absolute (the stage resolves them).
    """
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(directory):
        yield


def weight_nodes(model: Path) -> list[str]:
    """The nodes that multiply by a learned weight: MatMuls with a constant operand, Attention.

    Left in float: the embedding Gathers, the pooler and classifier Gemms (tiny), and the
    two activation x activation MatMuls per layer (Q.K^T, softmax.V), which int8 would
    quantize per tensor on both sides. On the twitter model quantizing those (dynamic
    int8) cost 1-2 points of agreement with PyTorch (measured in
    `marketpulse.tools.export_measure`) and saved almost no time, since their size grows
    with sequence length squared and tweets are short.
    """
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return [
        n.name
        for n in graph.node
        if n.op_type == "Attention" or (n.op_type == "MatMul" and n.input[1] in constants)
    ]


def int8_nodes(model: Path) -> list[str]:
    """The weight MatMuls to quantize: all but the float outlier-channel MatMuls.

    A fused Attention (O2/O3) stays float: static QDQ has no integer Attention kernel on
    the CPU provider, so its inputs would only be rounded and dequantized again.
    """
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    ops = {n.name: n.op_type for n in graph.node}
    return [n for n in weight_nodes(model) if ops[n] in INT8_OPS and not n.endswith(OUTLIER_SUFFIX)]


def infer_fused_shapes(model: Path, out_dir: Path) -> Path:
    """Type every tensor of an O2/O3-fused graph so the quantizer can find its weights.

    The quantizer reads tensor types from ONNX shape inference, which does not know
    ORT's contrib ops (Attention, SkipLayerNormalization, ...), so on a fused graph the
    MatMul after each Attention has no type and quantization stops ("Unable to find data
    type for weight_name"). ORT's symbolic shape inference knows those ops; auto_merge
    unifies the batch/sequence symbols that the fused attention mask path introduces.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _copy_graph(model, out_dir)
    try:
        with scratch_cwd(out_dir.parent / "scratch"):
            quant_pre_process(
                str(model),
                str(out_dir / model.name),
                skip_optimization=True,
                auto_merge=True,
                guess_output_rank=True,
            )
    except Exception as exc:  # symbolic shape inference raises bare Exceptions
        raise MarketpulseError(
            f"shape inference on the fused graph {model} failed ({first_line(exc)}); "
            "export with --optimization O1 or --int8-order quantize-then-optimize"
        ) from exc
    return out_dir / model.name


class _Feeds:
    """ORT's calibration reader over `Calibration.feeds` (exact-length, unpadded batches)."""

    def __init__(self, calibration: Calibration, inputs: set[str]):
        self._feeds = iter(calibration.feeds(inputs))

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def quantize_int8(model: Path, out_dir: Path, isa: str, calibration: Calibration) -> Path:
    """Static int8 of `int8_nodes`: weights per channel, one activation scale per tensor.

    The activation scales are fixed here from `calibration` (MinMax over its unpadded
    tokens, averaged over its batches), so a row's result never depends on the rows batched with it, as it did
    with dynamic int8's one scale per batch tensor. The histogram methods (Percentile,
    Entropy) stack every batch's tensors and so need one padded shape for all of them.

    QDQ with each MatMul's output left in float (ORT fuses it into
    MatMulIntegerToFloat at load): on the demo MiniLM (150 calibration rows, 3,708
    review snippets) it agreed with fp32 on 98.79%, against 98.17% with the outputs
    quantized too and 98.30% as QOperator (QLinearMatMul); dynamic int8 had 98.98%,
    static calibrated on 512 in-domain rows 98.95%.

    ORT's quantizer is called directly rather than through optimum's `ORTQuantizer`,
    which needs a `datasets.Dataset` to calibrate and always quantizes MatMul outputs;
    the ISA's choices still come from `quantization_config`.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    out_dir.mkdir(parents=True, exist_ok=True)
    qc = quantization_config(isa, int8_nodes(model))
    inputs = {i.name for i in onnx.load(str(model), load_external_data=False).graph.input}
    feeds = _Feeds(calibration, inputs)  # raises now when there are no calibration texts
    try:
        with scratch_cwd(out_dir.parent / "scratch"):
            quantize_static(
                str(model),
                str(out_dir / model.name),
                feeds,
                quant_format=QuantFormat[QUANT_FORMAT],
                op_types_to_quantize=list(INT8_OPS),
                per_channel=qc.per_channel,
                reduce_range=qc.reduce_range,
                activation_type=qc.activations_dtype,
                weight_type=qc.weights_dtype,
                nodes_to_quantize=qc.nodes_to_quantize,
                calibrate_method=CalibrationMethod[CALIBRATION_METHOD],
                extra_options={
                    "WeightSymmetric": qc.weights_symmetric,
                    "ActivationSymmetric": qc.activations_symmetric,
                    "OpTypesToExcludeOutputQuantization": list(INT8_OPS),
                    "CalibMovingAverage": CALIBRATION_MOVING_AVERAGE,
                },
            )
    except Exception as exc:  # onnx shape inference raises bare Exceptions
        raise MarketpulseError(
            f"int8 quantization of {model} failed ({first_line(exc)}); "
            "export with --optimization O1, or leave int8 out of --variants"
        ) from exc
    unround_other_consumers(out_dir / model.name, set(qc.nodes_to_quantize))
    if (model.parent / "config.json").is_file():  # optimum's optimizer reads it
        shutil.copyfile(model.parent / "config.json", out_dir / "config.json")
    return out_dir / model.name


def unround_other_consumers(model: Path, quantized: set[str]) -> None:
    """Feed the float tensor, not its int8 round trip, to every node but the `quantized`.

    The QDQ quantizer puts one QuantizeLinear -> DequantizeLinear pair on an activation
    and hands the dequantized copy to all of its consumers, so each LayerNorm output's
    residual Add would add the rounded value: error dynamic int8 never had, on the path
    that skips every MatMul. Only the quantized MatMuls need the pair.
    """
    import onnx

    proto = onnx.load(str(model))
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.name in quantized:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            q = (
                producers.get(dq.input[0])
                if dq is not None and dq.op_type == "DequantizeLinear"
                else None
            )
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    for op in ("DequantizeLinear", "QuantizeLinear"):  # pairs left feeding nothing
        used = {name for node in graph.node for name in node.input}
        used |= {out.name for out in graph.output}
        dead = [n for n in graph.node if n.op_type == op and n.output[0] not in used]
        for node in dead:
            graph.node.remove(node)
    onnx.save(proto, str(model))


def make_int8(
    fp32: Path,
    optimized: Path,
    level: str,
    order: str,
    isa: str,
    work: Path,
    calibration: Calibration,
) -> Path:
    """The int8 graph for `level` and `order` (see INT8_ORDERS); `optimized` is fp32 at `level`.

    The widest FFN channels are split off in float first (outliers.py), measured on
    `calibration`'s texts.
    """
    if order == "optimize-then-quantize":
        source = split_outlier_channels(optimized, work / "split", calibration)
        if level in ("O2", "O3"):
            source = infer_fused_shapes(source, work / "shapes")
        return quantize_int8(source, work / "quantized", isa, calibration)
    if order == "quantize-then-optimize":
        split = split_outlier_channels(fp32, work / "split", calibration)
        quantized = quantize_int8(split, work / "quantized", isa, calibration)
        return optimize(quantized, level, work / "optimized")
    raise MarketpulseError(f"unknown int8 order {order!r}; pass one of {', '.join(INT8_ORDERS)}")


def convert_fp16(model: Path, out_dir: Path) -> Path:
    """fp16 graph for the CUDA provider, made on any machine.

    The transformers optimizer fuses for GPU first (fused kernels are where fp16 pays
    off), then weights become float16 while inputs (int64 ids) and the logits output
    keep their types, so the runtime feeds and reads the same arrays for every variant.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((model.parent / "config.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    with scratch_cwd(out_dir.parent / "scratch"):
        fused = optimize_model(
            str(model),
            model_type="bert",
            num_heads=config["num_attention_heads"],
            hidden_size=config["hidden_size"],
            opt_level=0,
            use_gpu=True,
        )
        fused.convert_float_to_float16(keep_io_types=True)
        fused.save_model_to_file(str(out_dir / model.name))
    return out_dir / model.name
