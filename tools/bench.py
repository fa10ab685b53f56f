"""`make bench`: marketpulse score against the usual ways of running the same model.

    python -m marketpulse.tools.bench [--rows 3000] [--scale-rows 100000,1000000]
        [--model artifacts/model --bundle artifacts/bundle] [--data ../shared/data]

On the same rows of real text (the twitter texts under `--data`, replicated; else the
posts of the demo's artifacts/demo/market.duckdb), each in its own process so each has
its own peak RSS:

  (a) transformers `pipeline`, PyTorch fp32, batch 32 (the tutorial way)
  (b) optimum `ORTModelForSequenceClassification` on the bundle's int8 graph, in a
      `pipeline`, batch 32
  (c) PyTorch, length-sorted batches of 32, bf16 where the CPU has it natively, else fp32
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

This module is the orchestration and the click command: it finds the model and the texts,
builds the tables, runs each alternative in its own process and collects the results.
The child processes live in `bench_workers`, the int8 floor in `bench_floor`, and the
verdict on the targets and the printed table in `bench_report`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import click

from marketpulse import cpu
from marketpulse.errors import MarketpulseError
from marketpulse.sql import create_database
from marketpulse.tools import bench_workers
from marketpulse.tools.bench_floor import (
    MATMUL_OPS,
    flops_per_row,
    matmul_rate,
    mean_tokens,
    op_shares,
)
from marketpulse.tools.bench_report import (
    ALTERNATIVES,
    Targets,
    agreement,
    judge,
    label,
    missed_targets,
    parse_speedups,
    report,
)

TWITTER = "twitter_financial_news"  # inside --data: train.csv and valid.csv
DEMO_DB = Path(
    "artifacts/demo/market.duckdb"
)  # what `make demo` leaves: texts if --data lacks them


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


def run_baseline(
    alt: str, db: Path, table: str, model: Path, bundle: Path, work: Path, c_precision: str
) -> dict:
    out = work / f"{alt}.json"
    cmd = [sys.executable, "-m", "marketpulse.tools.bench", "--worker", alt, "--db", str(db)]
    cmd += ["--table", table, "--model", str(model), "--bundle", str(bundle), "--out", str(out)]
    cmd += ["--c-precision", c_precision]
    wall, rss = run_process(cmd, work / f"{alt}.log")
    result = json.loads(out.read_text())
    result.update(wall_s=wall, peak_rss_mib=rss)
    return result


def run_marketpulse(
    db: Path, table: str, bundle: Path, work: Path, threads: int | None, engine: str = "local"
) -> dict:
    """(d), (r) or, with engine="host", (h): one `score` run in its own process."""
    import duckdb

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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--rows",
    default=3000,
    show_default=True,
    type=click.IntRange(min=64),
    help="Rows every alternative scores.",
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
    "--c-precision",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    show_default=True,
    help="(c)'s dtype; auto: bf16 where the CPU has it natively (AVX512-BF16, AMX), else fp32.",
)
@click.option(
    "--min-speedup",
    multiple=True,
    metavar="RATIO=X",
    help="Override a speed target, e.g. d/a=4 (defaults: d/a=4, 3.5 on AVX2-only CPUs; "
    "d/b=2, d/c=1.2).",
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
    c_precision,
    min_speedup,
    min_agreement,
    max_rss_mib,
    work,
    out,
    worker,
    db,
    table,
):
    """Benchmark marketpulse score against transformers, optimum and sorted PyTorch.

    Example: python -m marketpulse.tools.bench --rows 3000 --scale-rows 100000,1000000
    """
    if c_precision == "auto":  # resolved once, here: the workers get bf16 or fp32
        c_precision = bench_workers.native_precision()
    if worker:
        try:
            if worker == "h":
                return bench_workers.host_worker(Path(db), table, Path(bundle), Path(out), threads)
            return bench_workers.worker(
                worker, Path(db), table, Path(model), Path(bundle), Path(out), c_precision
            )
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
        res = _bench(
            rows, scale, model, bundle, data, only, threads, Path(work), targets, c_precision
        )
    except MarketpulseError as exc:
        raise click.ClickException(str(exc)) from exc
    out_path.write_text(json.dumps(res, indent=2) + "\n")
    click.echo(report(res))
    click.echo(f"bench: wrote {out_path}", err=True)
    misses = missed_targets(res)
    if misses:
        raise click.ClickException(f"bench missed {len(misses)} target(s): " + "; ".join(misses))


def _bench(
    rows, scale, model, bundle, data, only, threads, work: Path, targets: Targets, c_precision
) -> dict:
    """Run the alternatives and the floor; the results, with `checks` judged on `targets`."""
    from marketpulse.bundle import load_bundle
    from marketpulse.cpu import available_cores

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
        "cpu": cpu.describe(),
        "cores": available_cores(),
        "alternatives": {},
        "checks": {},
    }
    for key in sorted(only):
        click.echo(f"bench: ({key}) {label(key, {'precision': c_precision})} ...", err=True)
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
            result = run_baseline(key, db, table, model_dir, bundle_dir, work, c_precision)
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
        click.echo("bench: measuring the int8 and fp32 matmul floors ...", err=True)
        cfg = json.loads((model_dir / "config.json").read_text())
        tokens = mean_tokens(bundle_dir, texts[:rows])
        k, n = cfg["hidden_size"], cfg.get("intermediate_size", 4 * cfg["hidden_size"])
        flops = flops_per_row(model_dir, tokens)
        rates = {dtype: matmul_rate(k, n, cores, dtype) for dtype in ("int8", "fp32")}
        ran = "int8" if alts["d"]["provider"].endswith("int8") else "fp32"
        ceiling = {dtype: rate / flops for dtype, rate in rates.items()}
        res["floor"] = {
            "mean_tokens": tokens,
            "gflop_per_row": flops / 1e9,
            "int8_gops": rates["int8"] / 1e9,
            "fp32_gflops": rates["fp32"] / 1e9,
            "threads": cores,
            "ceiling_rows_per_s": ceiling["int8"],
            "fp32_ceiling_rows_per_s": ceiling["fp32"],
            "graph_d": ran,
            "fraction_d": alts["d"]["rows_per_s"] / ceiling[ran],
        }
        click.echo(f"bench: profiling the {ran} graph's ops ...", err=True)
        shares = op_shares(bundle_dir, ran, texts[: min(rows, 1000)], work)
        res["floor"]["op_shares"] = shares
        res["floor"]["matmul_share"] = sum(v for op, v in shares.items() if op in MATMUL_OPS)
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
