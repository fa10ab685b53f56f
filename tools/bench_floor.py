"""The bench's floor: how fast this CPU could run the model at best.

Model FLOPs per row from the checkpoint's config.json and the mean token count of the
bench's texts under the bundle's tokenizer, against measured multiply-accumulate rates of
ONNX Runtime at the model's own shape and thread count: MatMulInteger (int8) and MatMul
(fp32). Their quotients are the ceilings in rows/s; the bench reports (d)'s fraction of
the ceiling of the graph (d) ran. onnx,
onnxruntime and numpy are imported inside the functions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def flops_per_row(model: Path, tokens: float) -> float:
    """Matmul FLOPs of one row of `tokens` tokens through the encoder (embeddings are lookups)."""
    cfg = json.loads((model / "config.json").read_text())
    d, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    ff = cfg.get("intermediate_size", 4 * d)
    projections = 2 * tokens * (4 * d * d + 2 * d * ff)  # Q, K, V, O and the two FFN matmuls
    attention = 2 * 2 * tokens * tokens * d  # QK^T and AV
    head = 2 * d * d + 2 * d * len(cfg.get("id2label", {0: 0, 1: 1}))  # pooler + classifier
    return layers * (projections + attention) + head


def matmul_rate(
    k: int, n: int, threads: int, dtype: str = "int8", m: int = 2048, seconds: float = 3.0
) -> float:
    """Measured multiply-accumulate throughput (ops/s, 2 per MAC) of ONNX Runtime on this
    CPU at the model's own K x N shape and thread count: MatMulInteger for "int8" (the
    int8 graph's kernel), MatMul for "fp32" (the fp32 graph's)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if dtype == "int8":
        op, a_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        b = rng.integers(-127, 127, (k, n), dtype=np.int8)
        a = rng.integers(0, 255, (m, k), dtype=np.uint8)
    else:
        op, a_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        b = rng.standard_normal((k, n), dtype=np.float32)
        a = rng.standard_normal((m, k), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        f"{dtype}_matmul",
        [helper.make_tensor_value_info("A", a_type, [m, k])],
        [helper.make_tensor_value_info("Y", y_type, [m, n])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess.run(None, {"A": a})
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        sess.run(None, {"A": a})
        runs += 1
    return 2.0 * m * k * n * runs / elapsed


def mean_tokens(bundle: Path, texts: list[str]) -> float:
    from marketpulse.bundle import load_bundle
    from marketpulse.inference.batching import TextEncoder

    b = load_bundle(bundle)
    return float(TextEncoder(b.tokenizer_path, b.max_length).encode(texts).lengths.mean())


# Ops that multiply matrices: the part of a graph's time the ceilings above bound. The
# fused attention ops multiply QK^T and AV but also run the softmax (and the mask and
# bias adds) in the same kernel, so for graphs that have them the matmul share counted
# from this set is an upper bound.
MATMUL_OPS = frozenset(
    {"MatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "Gemm", "FusedGemm",
     "FusedMatMul", "DynamicQuantizeMatMul",
     "Attention", "QAttention", "MultiHeadAttention", "QOrderedAttention"}
)  # fmt: skip


def op_shares(bundle: Path, variant: str, texts: list[str], work: Path) -> dict[str, float]:
    """Share of graph time per ONNX op type when `variant` scores `texts` as `score` does:
    one intra-op thread, the runtime's session options and token-budget batches, timed by
    ONNX Runtime's own profiler (`SessionOptions.enable_profiling`)."""
    from marketpulse.inference import predictor as pred
    from marketpulse.inference.batching import plan_batches

    opts = pred.default_session_options()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(work / f"ort-profile-{variant}")
    p = pred.Predictor(bundle, variant, "cpu", threads=1, session_options=opts, rescore_margin=0)
    encoded = p.encoder.encode(texts)
    for idx in plan_batches(encoded.lengths, p.batch_tokens):
        p.run(*encoded.batch(idx, p.encoder.pad_id))
    events = json.loads(Path(p.session.end_profiling()).read_text())
    micros: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            micros[op] = micros.get(op, 0.0) + e["dur"]
    total = sum(micros.values()) or 1.0
    return dict(sorted(((op, t / total) for op, t in micros.items()), key=lambda kv: -kv[1]))
