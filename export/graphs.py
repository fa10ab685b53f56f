"""Make the ONNX graphs of a bundle: the fp32 export, its ORT optimization, int8, fp16.

Every function takes a graph file and writes a new one, so the stage can chain them
in the order that `marketpulse.tools.export_measure` found fastest on this CPU:

    export (optimum) -> optimize (ORT level) -> split outlier channels -> quantize int8
                                               (dynamic, per-channel)
    export (optimum) -> transformers optimizer (model_type bert) -> float16 (fp32 I/O kept)

Nothing here talks to a model hub: the checkpoint is a local directory.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path

from marketpulse.errors import MarketpulseError
from marketpulse.export.outliers import OUTLIER_SUFFIX, Calibration, split_outlier_channels

OPTIMIZATION_LEVELS = ("none", "O1", "O2", "O3")
INT8_ORDERS = ("optimize-then-quantize", "quantize-then-optimize")
DEFAULT_OPSET = 18
WEIGHT_OPS = ("MatMul", "Attention")


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
    """optimum's dynamic, per-channel int8 config for `isa`, limited to `nodes` if given.

    VNNI computes u8*s8 in one instruction without saturating, so full range is safe;
    plain AVX2/AVX512 use VPMADDUBSW, whose int16 intermediate saturates, hence 7-bit
    `reduce_range`.
    """
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    kwargs = {"is_static": False, "per_channel": True}
    if nodes is not None:
        kwargs.update(nodes_to_quantize=nodes, operators_to_quantize=list(WEIGHT_OPS))
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
    two activation x activation MatMuls per layer (Q.K^T, softmax.V), which dynamic quantization would quantize per tensor on
    both sides. On the twitter model quantizing those cost 1-2 points of agreement with
    PyTorch (measured in `marketpulse.tools.export_measure`) and saved almost no time, since
    their size grows with sequence length squared and tweets are short.
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
    """The weight nodes to quantize: all but the float outlier-channel MatMuls."""
    return [n for n in weight_nodes(model) if not n.endswith(OUTLIER_SUFFIX)]


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
            f"shape inference on the fused graph {model} failed ({str(exc).splitlines()[0]}); "
            "export with --optimization O1 or --int8-order quantize-then-optimize"
        ) from exc
    return out_dir / model.name


def quantize_int8(model: Path, out_dir: Path, isa: str) -> Path:
    """Dynamic int8 quantization of `int8_nodes` (weights per channel, activations at run time)."""
    from optimum.onnxruntime import ORTQuantizer

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        quantizer = ORTQuantizer.from_pretrained(model.parent, file_name=model.name)
        config = quantization_config(isa, int8_nodes(model))
        with scratch_cwd(out_dir.parent / "scratch"):
            quantizer.quantize(config, save_dir=out_dir, file_suffix=None)
    except Exception as exc:  # onnx shape inference raises bare Exceptions
        raise MarketpulseError(
            f"int8 quantization of {model} failed ({str(exc).splitlines()[0]}); "
            "export with --optimization O1, or leave int8 out of --variants"
        ) from exc
    return out_dir / model.name


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
        return quantize_int8(source, work / "quantized", isa)
    if order == "quantize-then-optimize":
        split = split_outlier_channels(fp32, work / "split", calibration)
        quantized = quantize_int8(split, work / "quantized", isa)
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
