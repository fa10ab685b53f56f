"""`make gpu-check`: prove and time the CUDA path on a machine with an NVIDIA GPU.

    python -m marketpulse.tools.gpucheck --bundle BUNDLE --texts texts.csv [--rows 300000]

texts.csv has a `text` column and, optionally, a `reference_label` column (e.g. the
PyTorch model's predictions) to measure agreement against; without it the reference is
the bundle's fp32 graph on the CPU provider. The check:

1. reports onnxruntime's providers and the GPU (`nvidia-smi`);
2. scores the texts with `marketpulse score --device cuda` (a real CLI subprocess,
   DuckDB in and out) and measures label agreement with the reference labels, checks
   every row was scored exactly once and that `--device auto` chose CUDA;
3. times end-to-end scoring of a table of `--rows` rows (the texts replicated) for a
   few batch settings, each in its own process on a fresh results table, beside the
   tokenizer alone and ONNX Runtime alone on pre-tokenized rows, so the slowest stage
   is visible.

It prints a table and writes everything to `--out` (JSON). Runs that fail are
recorded with their error and the check goes on; at the end, `verdict` lists what was
missed (a failed run, agreement under `--min-agreement`, a row not scored exactly once,
`--device auto` not choosing CUDA) and the exit status is 1 if anything was.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from marketpulse.errors import first_line
from marketpulse.inference.predictor import CUDA

MIN_AGREEMENT = 0.99
# (name, extra CLI args, extra environment): the settings timed end to end.
CONFIGS = [
    ("default", [], {}),
    ("batch-tokens 65536", ["--batch-tokens", "65536"], {}),
    ("batch-tokens 16384", ["--batch-tokens", "16384"], {}),
    ("chunk-rows 16384", ["--chunk-rows", "16384"], {}),
    ("tokenizer on one thread", ["--threads", "1"], {}),
]


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> dict:
    """Run `marketpulse ...` in a subprocess; its --json summary, or the error."""
    cmd = [sys.executable, "-c", "from marketpulse.cli import main; main()", *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    log = [line for line in proc.stderr.splitlines() if "ETA" not in line]
    if proc.returncode != 0:
        return {"error": (log or ["no output"])[-1], "log": log[-20:], "wall_s": wall}
    summary = json.loads(proc.stdout)
    summary["wall_s"] = wall
    summary["log"] = log[-6:]
    return summary


def _gpu_name() -> str:
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        return subprocess.run(query, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "no nvidia-smi"


def _build_db(db: Path, texts: list[str], rows: int) -> None:
    import duckdb
    import pyarrow as pa

    reps = -(-rows // len(texts))
    big = (texts * reps)[:rows]
    with duckdb.connect(str(db)) as con:
        for name, rows_ in (("ref", texts), ("big", big)):
            table = pa.table({"id": pa.array(range(len(rows_)), pa.int64()), "text": rows_})
            con.register("incoming", table)
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM incoming")
            con.unregister("incoming")


def _stage_rates(bundle: Path, texts: list[str]) -> dict:
    """Tokenizer alone and ONNX Runtime alone (pre-tokenized), rows/s, on CUDA."""
    from marketpulse.inference.predictor import Predictor

    predictor = Predictor(bundle, device="cuda")
    sample = (texts * (-(-50_000 // len(texts))))[:50_000]
    start = time.perf_counter()
    encoded = predictor.encoder.encode(sample)
    tokenize = len(sample) / (time.perf_counter() - start)
    predictor.run_batches(encoded)  # warm-up: kernels, memory arena
    out = {"tokenizer_rows_per_s": tokenize, "mean_tokens": float(encoded.lengths.mean())}
    for budget in (16384, 32768, 65536, 131072):
        start = time.perf_counter()
        predictor.run_batches(encoded, budget)
        out[f"onnx_rows_per_s_tokens_{budget}"] = len(sample) / (time.perf_counter() - start)
    return out


def _fp32_labels(bundle: Path, texts: list[str]) -> list[str] | None:
    """The bundle's fp32 graph on the CPU: the reference export proved equal to PyTorch."""
    from marketpulse.bundle import load_bundle
    from marketpulse.inference.predictor import Predictor

    if "fp32" not in load_bundle(bundle).variants:
        return None
    return Predictor(bundle, variant="fp32", device="cpu").predict(texts)


def _agreement(db: Path, labels: list[str]) -> dict:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        got = dict(con.execute("SELECT id, label FROM scores_ref").fetchall())
        dupes = con.execute("SELECT count(*) - count(DISTINCT id) FROM scores_ref").fetchone()[0]
    same = sum(got.get(i) == label for i, label in enumerate(labels))
    return {
        "rows": len(labels),
        "scored": len(got),
        "duplicates": dupes,
        "agreement": same / len(labels),
    }


def verdict(report: dict, min_agreement: float = MIN_AGREEMENT) -> list[str]:
    """What the check missed, one line each; empty when the CUDA path passed."""
    misses = []
    correctness = report.get("correctness", {})
    if "error" in correctness:
        misses.append(f"--device cuda failed: {correctness['error']}")
    elif correctness.get("provider") != CUDA:
        misses.append(f"--device cuda ran on {correctness.get('provider')}, not {CUDA}")
    elif "agreement" not in correctness:
        misses.append(
            "no reference labels to measure agreement against: give --texts a "
            "reference_label column, or export the bundle with its fp32 graph"
        )
    else:
        if correctness["agreement"] < min_agreement:
            misses.append(
                f"label agreement {correctness['agreement']:.2%} with the reference is under "
                f"--min-agreement {min_agreement:.2%}"
            )
        if correctness["scored"] != correctness["rows"] or correctness["duplicates"]:
            misses.append(
                f"{correctness['scored']} of {correctness['rows']} rows scored, "
                f"{correctness['duplicates']} more than once: each row must be scored once"
            )
    auto = report.get("auto", {})
    if auto.get("provider") != CUDA:
        why = f" ({auto['error']})" if "error" in auto else ""
        misses.append(f"--device auto chose {auto.get('provider')}{why}, not {CUDA}")
    for name, run in report.get("runs", {}).items():
        if "error" in run:
            misses.append(f"timed run {name!r} failed: {run['error']}")
        elif run.get("rows_scored") != report["rows"]:
            misses.append(
                f"timed run {name!r} scored {run.get('rows_scored')} of {report['rows']} rows"
            )
    return misses


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--texts",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with a text column (and optionally reference_label).",
)
@click.option(
    "--rows",
    default=300_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows for the timed runs.",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=MIN_AGREEMENT,
    show_default=True,
    help="Share of texts whose CUDA label must equal the reference label.",
)
@click.option("--work", default=Path("artifacts/gpucheck"), type=click.Path(path_type=Path))
@click.option(
    "--out", default=Path("artifacts/gpucheck/gpucheck.json"), type=click.Path(path_type=Path)
)
def main(bundle: Path, texts: Path, rows: int, min_agreement: float, work: Path, out: Path):
    """Check and time `marketpulse score --device cuda`; exit 1 if a check is missed.

    Example: make gpu-check BUNDLE=artifacts/bundle
    """
    import onnxruntime as ort

    with open(texts, newline="") as fh:
        records = list(csv.DictReader(fh))
    text = [r["text"] for r in records]
    if records and "reference_label" in records[0]:
        reference = [r["reference_label"] for r in records]
    else:
        reference = _fp32_labels(bundle, text)
    work.mkdir(parents=True, exist_ok=True)
    db = work / "gpucheck.duckdb"
    db.unlink(missing_ok=True)
    _build_db(db, text, rows)
    smi = _gpu_name()
    report: dict = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "gpu": smi,
        "rows": rows,
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"onnxruntime {report['onnxruntime']}: {report['providers']}; GPU: {smi}", flush=True)
    base = ["score", "--db", str(db), "--id-col", "id", "--text-col", "text"]
    base += ["--bundle", str(bundle), "--json"]
    report["correctness"] = _cli(
        *base, "--table", "ref", "--results-table", "scores_ref", "--device", "cuda"
    )
    if reference and "error" not in report["correctness"]:
        report["correctness"].update(_agreement(db, reference))
    report["auto"] = _cli(
        *base,
        "--table",
        "ref",
        "--results-table",
        "scores_auto",
        "--device",
        "auto",
        "--limit",
        "2000",
    )
    save()
    print(
        json.dumps(
            {
                k: report["correctness"].get(k)
                for k in ("provider", "variant", "rows_scored", "agreement", "duplicates", "error")
            }
        ),
        flush=True,
    )
    print("auto:", report["auto"].get("provider"), report["auto"].get("error", ""), flush=True)
    try:
        report["stages"] = _stage_rates(bundle, text)
    except Exception as exc:  # keep going: the end-to-end runs matter more
        report["stages"] = {"error": first_line(exc)}
    save()
    print("stages:", json.dumps(report["stages"]), flush=True)
    report["runs"] = {}
    for i, (name, args, env) in enumerate(CONFIGS):
        result = _cli(
            *base,
            "--table",
            "big",
            "--results-table",
            f"scores_big_{i}",
            "--device",
            "cuda",
            *args,
            env=env,
        )
        report["runs"][name] = result
        save()
        print(
            f"{name:<22} {result.get('rows_per_s', 0):>10,.0f} rows/s "
            f"(wall {result.get('wall_s', 0):.1f} s) {result.get('error', '')}",
            flush=True,
        )
    misses = verdict(report, min_agreement)
    report["verdict"] = {"ok": not misses, "min_agreement": min_agreement, "missed": misses}
    save()
    print(f"\nwrote {out}")
    if misses:
        lines = "".join(f"\n  - {miss}" for miss in misses)
        raise click.ClickException(f"gpu-check missed {len(misses)} check(s):{lines}")
    print("gpu-check: every check passed")


if __name__ == "__main__":
    main()
