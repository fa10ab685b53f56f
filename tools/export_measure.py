"""Measure which ORT optimization level and int8 order is fastest at equal accuracy.

    python -m marketpulse.tools.export_measure CHECKPOINT [--rows 256] [--threads 2] [--repeats 3]

Exports CHECKPOINT once, then builds the fp32 graph at each offline level and the int8
graph for each (level, order), runs every graph in a plain ONNX Runtime loop of its own
(ORT_ENABLE_ALL at load, `--threads` intra-op threads on one batch at a time, batches of
32 rows sorted by length) and prints rows/s next to agreement and max logit difference
vs PyTorch. This is not the runtime's session (`marketpulse.inference.predictor`: one
intra-op thread per batch, several batches at once, SkipLayerNormFusion left out), so
compare its rows/s between graphs, not with `marketpulse score`.
A combination that cannot be built is listed with its error, not skipped silently.
The defaults in `marketpulse.export.stage` come from this table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from marketpulse import cpu
from marketpulse.errors import MarketpulseError

BATCH_ROWS = 32


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _batches(tokenizer_path: Path, texts: list[str], max_length: int):
    from marketpulse.inference.batching import TextEncoder, pad

    encoder = TextEncoder(tokenizer_path, max_length)
    encoded = encoder.encode(texts)
    order = np.argsort(encoded.lengths, kind="stable")
    out = []
    for start in range(0, len(texts), BATCH_ROWS):
        idx = order[start : start + BATCH_ROWS]
        ids, mask = pad([encoded.ids[i] for i in idx], encoder.pad_id)
        out.append((idx, ids, mask))
    return out


def _run(session, batches, n: int, n_labels: int) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    logits = np.empty((n, n_labels), dtype=np.float32)
    for idx, ids, mask in batches:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        logits[idx] = session.run(None, feeds)[0]
    return logits


def measure(checkpoint: Path, rows: int, threads: int, repeats: int) -> list[dict]:
    from marketpulse.checkpoint import load_checkpoint
    from marketpulse.export import graphs
    from marketpulse.export.checks import TorchReference, load_check_texts
    from marketpulse.export.outliers import Calibration
    from marketpulse.export.stage import write_tokenizer

    trained = load_checkpoint(checkpoint)
    labels = list(trained.labels)
    texts = load_check_texts(trained, rows)
    results = []
    with tempfile.TemporaryDirectory(prefix="marketpulse-measure-") as tmp:
        work = Path(tmp)
        write_tokenizer(checkpoint, work / "tokenizer.json", 128)
        batches = _batches(work / "tokenizer.json", texts.texts, 128)
        reference = TorchReference(checkpoint)
        expected = np.empty((len(texts.texts), len(labels)), dtype=np.float32)
        for idx, ids, mask in batches:
            expected[idx] = reference.logits(ids, mask)

        fp32 = graphs.export_fp32(checkpoint, work)
        isa = cpu.isa()
        candidates = []
        for level in graphs.OPTIMIZATION_LEVELS:
            try:
                optimized = graphs.optimize(fp32, level, work / f"fp32-{level}")
            except MarketpulseError as exc:
                results.append({"graph": f"fp32 {level}", "error": str(exc)})
                continue
            candidates.append((f"fp32 {level}", optimized))
            # with no offline optimization both orders build the same graph
            for order in graphs.INT8_ORDERS[:1] if level == "none" else graphs.INT8_ORDERS:
                name = f"int8 {level} {order}"
                try:
                    int8 = graphs.make_int8(
                        fp32,
                        optimized,
                        level,
                        order,
                        isa,
                        work / f"int8-{level}-{order}",
                        Calibration(work / "tokenizer.json", 128, texts.texts),
                    )
                except MarketpulseError as exc:
                    results.append({"graph": name, "error": str(exc)[:160]})
                    continue
                candidates.append((name, int8))

        # Round-robin timing: on a shared machine, load spikes hit every graph alike.
        sessions = {name: _session(path, threads) for name, path in candidates}
        logits = {
            name: _run(s, batches, len(texts.texts), len(labels)) for name, s in sessions.items()
        }
        seconds: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(repeats):
            for name, session in sessions.items():
                start = time.perf_counter()
                _run(session, batches, len(texts.texts), len(labels))
                seconds[name].append(time.perf_counter() - start)
        for name, path in candidates:
            results.append(
                {
                    "graph": name,
                    "rows_per_s": len(texts.texts) / min(seconds[name]),
                    "median_rows_per_s": len(texts.texts) / float(np.median(seconds[name])),
                    "agreement": float((logits[name].argmax(1) == expected.argmax(1)).mean()),
                    "max_abs_logit_diff": float(np.abs(logits[name] - expected).max()),
                    "size_mib": path.stat().st_size / 2**20,
                }
            )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results = measure(args.checkpoint.resolve(), args.rows, args.threads, args.repeats)
    print(f"{len(results)} graphs, {args.threads} threads, best and median of {args.repeats} runs")
    print(f"{'graph':<40} {'rows/s':>8} {'median':>8} {'agree':>7} {'max|dlogit|':>11} {'MiB':>6}")
    for r in results:
        if "error" in r:
            print(f"{r['graph']:<40} FAILED: {r['error']}")
        else:
            print(
                f"{r['graph']:<40} {r['rows_per_s']:>8.1f} {r['median_rows_per_s']:>8.1f} "
                f"{r['agreement']:>7.2%} "
                f"{r['max_abs_logit_diff']:>11.2e} {r['size_mib']:>6.1f}"
            )


if __name__ == "__main__":
    main()
