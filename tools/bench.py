"""`make bench`: marketpulse score against the usual ways of running the same model.

    python -m marketpulse.tools.bench [--rows 3000] [--scale-rows 100000,1000000]
        [--model artifacts/model --bundle artifacts/bundle] [--data ../shared/data]

On the same rows of real text (the twitter texts under `--data`, replicated; else the
posts of the demo's artifacts/demo/market.duckdb), each in its own process so each has
its own peak RSS:

  (a) transformers `pipeline`, PyTorch fp32, batch 32 (the tutorial way)
  (b) optimum `ORTModelForSequenceClassification` on the bundle's int8 graph, in a
      `pipeline`, batch 32
  (c) PyTorch bf16, length-sorted batches of 32
  (d) `marketpulse score`, DuckDB in and out (rows/s of the streaming phase; the
      whole-process time is reported beside it)
  (h) the host ceiling: the same `score` run with ONNX Runtime replaced by zero logits
      (`ZeroLogitsPredictor`), everything else real: DuckDB reads, tokenizing, batching
      and padding, result rows, commits. Its share of (d)'s time is what the host costs;
      the rest is inference. A GPU can only take (d) as far as (h).

It prints rows/s, the ratios d/a d/b d/c, each one's label agreement with (a) and its
peak RSS, then the floor: model FLOPs per row against a measured int8 matmul rate on
this CPU, and the fraction of it (d) reaches. `--scale-rows` also runs (d) alone on
bigger tables to show its peak RSS stays flat. Numbers go to a JSON file; the exit
status is 1 when a target (`--min-speedup`, `--min-agreement`, `--max-rss-mib`) is missed.
Paths default relative to the working directory (`make bench` runs from the repo root).
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from marketpulse.errors import MarketpulseError
from marketpulse.inference.predictor import Predictor
from marketpulse.sql import create_database

TWITTER = "twitter_financial_news"  # inside --data: train.csv and valid.csv
DEMO_DB = Path(
    "artifacts/demo/market.duckdb"
)  # what `make demo` leaves: texts if --data lacks them
ALTERNATIVES = {
    "a": "transformers pipeline, PyTorch fp32, batch 32",
    "b": "optimum ORTModel int8 in a pipeline, batch 32",
    "c": "PyTorch bf16, length-sorted batches of 32",
    "d": "marketpulse score, DuckDB in and out",
    "h": "host ceiling: (d) with inference stubbed",
    "r": "marketpulse score --engine ray, local Ray cluster",
}
BATCH = 32


class ZeroLogitsPredictor(Predictor):
    """The bundle's Predictor with ONNX Runtime left out: zero logits of the right shape.

    Used only by the (h) worker. Batches are still planned and padded, and the softmax
    still runs, so what a run with it costs is everything `score` does but inference.
    """

    def run(self, input_ids, attention_mask):
        import numpy as np

        return np.zeros((len(input_ids), len(self.labels)), dtype=np.float32)


@dataclass(frozen=True)
class Targets:
    """What (d) must reach; a miss makes the bench exit 1."""

    speedup: dict[str, float] = field(default_factory=lambda: {"d/a": 4.0, "d/b": 2.0, "d/c": 1.2})
    min_agreement: float = 0.99  # (d)'s labels against (a)'s
    max_rss_mib: float = 1536.0  # (d) on the largest --scale-rows table
    max_rss_growth: float = 0.10  # smallest -> largest --scale-rows table


# ---------------------------------------------------------------- inputs
def resolve_model(model: str | None, bundle: str | None) -> tuple[Path, Path]:
    """Checkpoint and bundle: flags, else artifacts/{model,bundle}, else the demo's."""
    candidates = [(model, bundle)] if model or bundle else []
    candidates += [("artifacts/model", "artifacts/bundle")]
    candidates += [("artifacts/demo/model", "artifacts/demo/bundle")]
    for m, b in candidates:
        if (
            m
            and b
            and (Path(m) / "config.json").is_file()
            and (Path(b) / "manifest.json").is_file()
        ):
            return Path(m), Path(b)
    if model or bundle:
        raise MarketpulseError(
            f"--model {model} needs config.json and --bundle {bundle} needs manifest.json; pass "
            "both, a checkpoint from `marketpulse train` and its bundle from `marketpulse export`"
        )
    raise MarketpulseError(
        "no model to benchmark (artifacts/model + artifacts/bundle not found); run `make demo` "
        "or `make train export`, or pass --model CHECKPOINT --bundle BUNDLE"
    )


def load_texts(data: Path, demo: Path = DEMO_DB, seed: int = 0) -> tuple[list[str], str]:
    """Real texts: the twitter financial news set under `data`, else the demo's posts."""
    import csv

    twitter = Path(data) / TWITTER
    texts: list[str] = []
    for name in ("train.csv", "valid.csv"):
        path = twitter / name
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                texts += [row["text"] for row in csv.DictReader(fh)]
    origin = f"{twitter} (train+valid)"
    if not texts:
        import duckdb

        if not demo.is_file():
            raise MarketpulseError(
                f"no texts: {twitter} is absent and so is {demo}; pass --data DIR (the "
                "folder holding twitter_financial_news/), or run `make demo` first"
            )
        con = duckdb.connect(str(demo), read_only=True)
        rows = con.execute("SELECT text FROM posts WHERE text IS NOT NULL").fetchall()
        texts = [r[0] for r in rows]
        con.close()
        origin = f"{demo} posts"
    random.Random(seed).shuffle(texts)
    return texts, origin


def build_tables(db: Path, texts: list[str], sizes: list[int]) -> None:
    """Tables posts_<n>(id BIGINT, text VARCHAR): the texts replicated to n rows."""
    import duckdb
    import pyarrow as pa

    db.unlink(missing_ok=True)
    create_database(db)  # in a format DuckDB 1.x clients open too
    con = duckdb.connect(str(db))
    con.register("base", pa.table({"k": range(len(texts)), "text": texts}))
    con.execute("CREATE TABLE texts AS SELECT * FROM base")
    for n in sorted(set(sizes)):
        con.execute(
            f"CREATE TABLE posts_{n} AS SELECT r.range AS id, t.text FROM range({n}) r "
            f"JOIN texts t ON t.k = r.range % {len(texts)} ORDER BY id"
        )
    con.close()


# ---------------------------------------------------------------- one alternative per process
def run_process(cmd: list[str], stdout: Path) -> tuple[float, float]:
    """Run a child; return (wall seconds, the child's own peak RSS in MiB)."""
    log = stdout.with_suffix(".stderr.log")
    start = time.perf_counter()
    with open(stdout, "w") as out, open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        # wait4, not RUSAGE_CHILDREN: the peak of this child alone, not of all so far.
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise MarketpulseError(f"benchmark step failed ({' '.join(cmd[2:8])} ...): {tail}")
    return wall, usage.ru_maxrss / 1024


def run_baseline(alt: str, db: Path, table: str, model: Path, bundle: Path, work: Path) -> dict:
    out = work / f"{alt}.json"
    cmd = [sys.executable, "-m", "marketpulse.tools.bench", "--worker", alt, "--db", str(db)]
    cmd += ["--table", table, "--model", str(model), "--bundle", str(bundle), "--out", str(out)]
    wall, rss = run_process(cmd, work / f"{alt}.log")
    result = json.loads(out.read_text())
    result.update(wall_s=wall, peak_rss_mib=rss)
    return result


def run_marketpulse(
    db: Path, table: str, bundle: Path, work: Path, threads: int | None, engine: str = "local"
) -> dict:
    import duckdb

    """(d), (r) or, with engine="host", (h): one `score` run in its own process."""
    key = {"ray": "r", "host": "h"}.get(engine, "d")
    results_db = work / f"scores_{key}_{table}.duckdb"
    results_db.unlink(missing_ok=True)
    if engine == "host":  # the bench's own worker: `score` with ZeroLogitsPredictor
        cmd = [sys.executable, "-m", "marketpulse.tools.bench", "--worker", "h"]
        cmd += ["--db", str(db), "--table", table, "--bundle", str(bundle)]
        cmd += ["--out", str(results_db)]
    else:
        cmd = [sys.executable, "-c", "from marketpulse.cli import main; main()", "score"]
        cmd += ["--db", str(db), "--table", table, "--id-col", "id", "--text-col", "text"]
        cmd += ["--bundle", str(bundle), "--results-db", str(results_db), "--device", "cpu"]
        cmd += ["--json"]
    if engine == "ray":
        cmd += ["--engine", "ray"]
    if threads:
        cmd += ["--threads", str(threads)]
    wall, rss = run_process(cmd, work / f"{key}_{table}.json")
    stats = json.loads((work / f"{key}_{table}.json").read_text())
    con = duckdb.connect(str(results_db), read_only=True)
    labels = [r[0] for r in con.execute("SELECT label FROM scores ORDER BY id").fetchall()]
    con.close()
    rows = stats["rows_scored"] + stats["rows_skipped"]
    return {
        "rows": rows,
        "rows_per_s": stats["rows_per_s"],
        "seconds": stats["seconds"],
        "wall_s": wall,
        "wall_rows_per_s": rows / wall,
        "peak_rss_mib": rss,
        "labels": labels,
        "provider": f"{stats['provider']} {stats['variant']}",
    }


# ---------------------------------------------------------------- workers (child processes)
def _read_texts(db: Path, table: str) -> list[str]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    texts = [r[0] for r in con.execute(f"SELECT text FROM {table} ORDER BY id").fetchall()]
    con.close()
    return texts


def host_worker(db: Path, table: str, bundle: Path, results_db: Path, threads: int | None):
    """(h): `marketpulse score --device cpu --json` as the CLI runs it, inference stubbed."""
    from marketpulse.runtime import ScoreConfig, score

    cfg = ScoreConfig(
        db=db,
        table=table,
        id_col="id",
        text_col="text",
        bundle=bundle,
        results_db=results_db,
        device="cpu",
        threads=threads,
    )
    stats = score(cfg, predictor_type=ZeroLogitsPredictor)
    click.echo(stats.summary(), err=True)
    click.echo(json.dumps(stats.to_dict(), indent=2))


def worker(alt: str, db: Path, table: str, model: Path, bundle: Path, out: Path) -> None:
    from transformers import AutoTokenizer, pipeline

    from marketpulse.bundle import load_bundle

    texts = _read_texts(db, table)
    max_length = load_bundle(bundle).max_length
    tokenizer = AutoTokenizer.from_pretrained(model)
    if alt == "a":
        pipe = pipeline("text-classification", model=str(model), tokenizer=tokenizer, device=-1)
    elif alt == "b":
        from optimum.onnxruntime import ORTModelForSequenceClassification

        onnx_dir = out.parent / "optimum_int8"
        shutil.rmtree(onnx_dir, ignore_errors=True)
        onnx_dir.mkdir()
        shutil.copy(model / "config.json", onnx_dir / "config.json")
        os.symlink((bundle / "model.int8.onnx").resolve(), onnx_dir / "model.onnx")
        ort_model = ORTModelForSequenceClassification.from_pretrained(onnx_dir)
        pipe = pipeline("text-classification", model=ort_model, tokenizer=tokenizer, device=-1)
    elif alt != "c":
        raise MarketpulseError(f"unknown worker {alt!r}")

    def run(xs: list[str]) -> list[str]:
        preds = pipe(xs, batch_size=BATCH, truncation=True, max_length=max_length)
        return [p["label"] for p in preds]

    if alt == "c":
        run = _bf16_sorted(model, tokenizer, max_length)
    run(texts[:BATCH])  # warm-up: first-call allocations are not throughput
    start = time.perf_counter()
    labels = run(texts)
    seconds = time.perf_counter() - start
    result = {"rows": len(texts), "seconds": seconds, "rows_per_s": len(texts) / seconds}
    result["labels"] = labels
    result["self_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result))


def _bf16_sorted(model: Path, tokenizer, max_length: int):
    import torch
    from transformers import AutoModelForSequenceClassification

    net = AutoModelForSequenceClassification.from_pretrained(model).eval().to(torch.bfloat16)
    id2label = net.config.id2label

    def run(texts: list[str]) -> list[str]:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
        labels: list[str] = [""] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                batch = tokenizer.pad(
                    {k: [enc[k][i] for i in idx] for k in enc.keys()}, return_tensors="pt"
                )
                pred = net(**batch).logits.float().argmax(dim=-1).tolist()
                for i, p in zip(idx, pred, strict=True):
                    labels[i] = id2label[p]
        return labels

    return run


# ---------------------------------------------------------------- the floor
def flops_per_row(model: Path, tokens: float) -> float:
    """Matmul FLOPs of one row of `tokens` tokens through the encoder (embeddings are lookups)."""
    cfg = json.loads((model / "config.json").read_text())
    d, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    ff = cfg.get("intermediate_size", 4 * d)
    projections = 2 * tokens * (4 * d * d + 2 * d * ff)  # Q, K, V, O and the two FFN matmuls
    attention = 2 * 2 * tokens * tokens * d  # QK^T and AV
    head = 2 * d * d + 2 * d * len(cfg.get("id2label", {0: 0, 1: 1}))  # pooler + classifier
    return layers * (projections + attention) + head


def int8_matmul_rate(k: int, n: int, threads: int, m: int = 2048, seconds: float = 3.0) -> float:
    """Measured int8 multiply-accumulate throughput (ops/s, 2 per MAC) of ONNX Runtime's
    MatMulInteger on this CPU, at the model's own K x N shape and thread count."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "int8_matmul",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 255, (m, k), dtype=np.uint8)
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


# ---------------------------------------------------------------- report
def agreement(labels: list, reference: list) -> float:
    pairs = [(x, y) for x, y in zip(labels, reference, strict=True) if y is not None]
    return sum(x == y for x, y in pairs) / max(len(pairs), 1)


def report(res: dict) -> str:
    alts, lines = res["alternatives"], []
    lines.append(f"bench: {res['rows']:,} rows of {res['texts']}, model {res['model']}")
    lines.append(f"       {res['cpu']}, {res['cores']} cores")
    lines.append(f"{'':4}{'alternative':48}{'rows/s':>9}{'d/x':>7}{'agree(a)':>10}{'peak RSS':>11}")
    d = alts.get("d", {}).get("rows_per_s")
    for key, alt in alts.items():
        ratio = f"{d / alt['rows_per_s']:.2f}" if d and key != "d" else "-"
        agree = f"{100 * alt['agreement_with_a']:.2f}%" if "agreement_with_a" in alt else "-"
        lines.append(
            f"({key}) {ALTERNATIVES[key]:48}{alt['rows_per_s']:9.1f}{ratio:>7}{agree:>10}"
            f"{alt['peak_rss_mib']:8.0f} MiB"
        )
    if "d" in alts:
        lines.append(
            f"    (d) whole process incl. start-up and model load: {alts['d']['wall_s']:.1f}s, "
            f"{alts['d']['wall_rows_per_s']:.1f} rows/s"
        )
    if "share_of_d" in alts.get("h", {}):
        lines.append(
            f"    (h) host work is {100 * alts['h']['share_of_d']:.1f}% of (d)'s time; the rest "
            "is inference"
        )
    for name, check in res["checks"].items():
        lines.append(
            f"    {'PASS' if check['ok'] else 'FAIL'}  {name}: {check['value']}  (target {check['target']})"
        )
    f = res.get("floor")
    if f:
        lines.append(
            f"floor: {f['gflop_per_row']:.3f} GFLOP/row at {f['mean_tokens']:.1f} tokens/row; int8 "
            f"matmul {f['int8_gops']:.0f} GOP/s on {f['threads']} threads -> ceiling "
            f"{f['ceiling_rows_per_s']:.0f} rows/s; (d) reaches {100 * f['fraction_d']:.1f}%"
        )
    for s in res.get("scale", []):
        lines.append(
            f"scale: (d) on {s['rows']:,} rows: {s['rows_per_s']:.1f} rows/s, peak RSS "
            f"{s['peak_rss_mib']:.0f} MiB"
        )
    return "\n".join(lines)


def judge(res: dict, targets: Targets) -> dict:
    """Each target that the measured figures allow checking: value shown, target, ok."""
    alts, scale, checks = res["alternatives"], res.get("scale", []), {}

    def check(name: str, value: float, target: str, ok: bool, fmt: str = "{:.2f}") -> None:
        checks[name] = {"value": fmt.format(value), "target": target, "ok": bool(ok)}

    if "d" in alts:
        for name, target in targets.speedup.items():
            other = name.split("/")[1]
            if other in alts:
                ratio = alts["d"]["rows_per_s"] / alts[other]["rows_per_s"]
                check(name, ratio, f">= {target:g}", ratio >= target)
        if "agreement_with_a" in alts["d"]:
            agree = alts["d"]["agreement_with_a"]
            check(
                "agreement d vs a",
                100 * agree,
                f">= {100 * targets.min_agreement:g}%",
                agree >= targets.min_agreement,
                "{:.2f}%",
            )
    if scale:
        big, small = scale[-1], scale[0]
        check(
            f"(d) peak RSS at {big['rows']:,} rows",
            big["peak_rss_mib"],
            f"< {targets.max_rss_mib:g} MiB",
            big["peak_rss_mib"] < targets.max_rss_mib,
            "{:.0f} MiB",
        )
        if len(scale) > 1:
            growth = big["peak_rss_mib"] / small["peak_rss_mib"] - 1
            check(
                f"(d) peak RSS growth {small['rows']:,} -> {big['rows']:,} rows",
                100 * growth,
                f"<= {100 * targets.max_rss_growth:g}%",
                growth <= targets.max_rss_growth,
                "{:+.1f}%",
            )
    return checks


def missed_targets(res: dict) -> list[str]:
    """One line per missed target, for the exit message."""
    return [
        f"{name} {c['value']} (target {c['target']})"
        for name, c in res["checks"].items()
        if not c["ok"]
    ]


def parse_speedups(values: tuple[str, ...]) -> dict[str, float]:
    """`--min-speedup d/a=4` pairs over the default targets."""
    speedup = dict(Targets().speedup)
    for value in values:
        name, sep, number = value.partition("=")
        try:
            target = float(number)
        except ValueError:
            target = None
        if not sep or name not in speedup or target is None:
            raise click.BadParameter(
                f"{value!r}: use RATIO=NUMBER with RATIO one of {', '.join(speedup)}, e.g. d/a=4",
                param_hint="--min-speedup",
            )
        speedup[name] = target
    return speedup


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--rows",
    default=3000,
    show_default=True,
    type=click.IntRange(min=64),
    help="Rows all four alternatives score.",
)
@click.option("--scale-rows", default="", help="Bigger tables for (d) alone, e.g. 100000,1000000.")
@click.option(
    "--model", type=click.Path(file_okay=False), help="Checkpoint [default: artifacts/model]."
)
@click.option(
    "--bundle", type=click.Path(file_okay=False), help="Its bundle [default: artifacts/bundle]."
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default="../shared/data",
    show_default=True,
    envvar="MARKETPULSE_DATA",
    show_envvar=True,
    help="Shared data folder holding twitter_financial_news/{train,valid}.csv; without them "
    f"the texts are the posts of {DEMO_DB}.",
)
@click.option("--only", default="abcdhr", show_default=True, help="Alternatives to run.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for (d) [default: all cores].")
@click.option(
    "--min-speedup",
    multiple=True,
    metavar="RATIO=X",
    help="Override a speed target, e.g. d/a=4 (defaults: d/a=4, d/b=2, d/c=1.2).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=Targets.min_agreement,
    show_default=True,
    help="Share of rows where (d)'s label must equal (a)'s.",
)
@click.option(
    "--max-rss-mib",
    type=click.FloatRange(min=0),
    default=Targets.max_rss_mib,
    show_default=True,
    help="Peak RSS (d) must stay under on the largest --scale-rows table.",
)
@click.option(
    "--work", default="artifacts/bench", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--out", type=click.Path(dir_okay=False), help="JSON results [default: WORK/bench.json]."
)
@click.option("--worker", hidden=True)
@click.option("--db", hidden=True)
@click.option("--table", hidden=True)
def main(
    rows,
    scale_rows,
    model,
    bundle,
    data,
    only,
    threads,
    min_speedup,
    min_agreement,
    max_rss_mib,
    work,
    out,
    worker,
    db,
    table,
):
    """Benchmark marketpulse score against transformers, optimum and PyTorch bf16.

    Example: python -m marketpulse.tools.bench --rows 3000 --scale-rows 100000,1000000
    """
    if worker:
        try:
            if worker == "h":
                return host_worker(Path(db), table, Path(bundle), Path(out), threads)
            return worker_main(worker, Path(db), table, Path(model), Path(bundle), Path(out))
        except MarketpulseError as exc:
            raise click.ClickException(str(exc)) from exc
    if not only or set(only) - set(ALTERNATIVES):
        raise click.BadParameter(
            f"{only!r}: use letters from {''.join(ALTERNATIVES)}", param_hint="--only"
        )
    try:
        scale = sorted({int(x) for x in scale_rows.split(",") if x.strip()})
    except ValueError:
        raise click.BadParameter(
            f"{scale_rows!r}: use comma-separated row counts, e.g. 100000,1000000",
            param_hint="--scale-rows",
        ) from None
    targets = Targets(parse_speedups(min_speedup), min_agreement, max_rss_mib)
    out_path = Path(out) if out else Path(work) / "bench.json"
    try:
        res = _bench(rows, scale, model, bundle, data, only, threads, Path(work), targets)
    except MarketpulseError as exc:
        raise click.ClickException(str(exc)) from exc
    out_path.write_text(json.dumps(res, indent=2) + "\n")
    click.echo(report(res))
    click.echo(f"bench: wrote {out_path}", err=True)
    misses = missed_targets(res)
    if misses:
        raise click.ClickException(f"bench missed {len(misses)} target(s): " + "; ".join(misses))


worker_main = worker


def _bench(rows, scale, model, bundle, data, only, threads, work: Path, targets: Targets) -> dict:
    """Run the alternatives and the floor; the results, with `checks` judged on `targets`."""
    from marketpulse.bundle import load_bundle
    from marketpulse.inference.predictor import available_cores

    model_dir, bundle_dir = resolve_model(model, bundle)
    load_bundle(bundle_dir)  # refuse a corrupt bundle before minutes of work
    work.mkdir(parents=True, exist_ok=True)
    texts, origin = load_texts(data)
    db = work / "bench.duckdb"
    click.echo(
        f"bench: building tables of {rows:,}{''.join(f', {n:,}' for n in scale)} rows in {db}",
        err=True,
    )
    build_tables(db, texts, [rows, *scale])
    table = f"posts_{rows}"
    cores = threads or available_cores()
    res = {
        "rows": rows,
        "texts": origin,
        "model": str(model_dir),
        "bundle": str(bundle_dir),
        "cpu": platform.processor() or platform.machine(),
        "cores": available_cores(),
        "alternatives": {},
        "checks": {},
    }
    for key in sorted(only):
        click.echo(f"bench: ({key}) {ALTERNATIVES[key]} ...", err=True)
        if key == "d":
            result = run_marketpulse(db, table, bundle_dir, work, threads)
        elif key == "h":
            result = run_marketpulse(db, table, bundle_dir, work, threads, engine="host")
        elif key == "r":
            from marketpulse.runtime.ray_engine import ray_available

            if not ray_available():
                click.echo(
                    "bench: (r) skipped: Ray is not installed (pip install 'marketpulse[ray]')",
                    err=True,
                )
                continue
            result = run_marketpulse(db, table, bundle_dir, work, threads, engine="ray")
        else:
            result = run_baseline(key, db, table, model_dir, bundle_dir, work)
        click.echo(f"bench: ({key}) {result['rows_per_s']:.1f} rows/s", err=True)
        res["alternatives"][key] = result
    alts = res["alternatives"]
    if "a" in alts:
        for key, alt in alts.items():
            if key != "h":  # (h)'s labels are the argmax of zeros
                alt["agreement_with_a"] = agreement(alt["labels"], alts["a"]["labels"])
    if "d" in alts and "h" in alts:
        # Same rows: the host's seconds over (d)'s.
        alts["h"]["share_of_d"] = alts["d"]["rows_per_s"] / alts["h"]["rows_per_s"]
    if "d" in alts:
        click.echo("bench: measuring the int8 matmul floor ...", err=True)
        cfg = json.loads((model_dir / "config.json").read_text())
        tokens = mean_tokens(bundle_dir, texts[:rows])
        rate = int8_matmul_rate(
            cfg["hidden_size"], cfg.get("intermediate_size", 4 * cfg["hidden_size"]), cores
        )
        flops = flops_per_row(model_dir, tokens)
        res["floor"] = {
            "mean_tokens": tokens,
            "gflop_per_row": flops / 1e9,
            "int8_gops": rate / 1e9,
            "threads": cores,
            "ceiling_rows_per_s": rate / flops,
            "fraction_d": alts["d"]["rows_per_s"] / (rate / flops),
        }
    res["scale"] = []
    for n in scale:
        click.echo(f"bench: (d) alone on {n:,} rows ...", err=True)
        result = run_marketpulse(db, f"posts_{n}", bundle_dir, work, threads)
        result.pop("labels")
        res["scale"].append({"rows": n, **result})
    for alt in alts.values():
        alt.pop("labels", None)
    res["checks"] = judge(res, targets)
    return res


if __name__ == "__main__":
    main()
