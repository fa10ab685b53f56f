"""`make isa-check`: does a bundle's int8 graph still agree with fp32 on an AVX2-only CPU?

    python -m marketpulse.tools.isacheck --bundle BUNDLE --check-input texts.csv
        [--check-text-col text] [--rows 300] [--cpu Haswell] [--min-agreement 0.99]
        [--out check.json]

The texts are sampled as `marketpulse export` samples its check texts, with the same
flags (`--check-input FILE`, or `--check-db DB --check-table T`).

ONNX Runtime picks its int8 kernels by the CPU it runs on: VNNI where the CPU has it,
VPMADDUBSW on plain AVX2, whose int16 pair sums can saturate. Export gates int8 on the
machine that exports, and the machine that scores may be another kind. This check runs
the bundle's int8 graph under QEMU's user-mode emulator with an AVX2-only CPU model
(`qemu-x86_64 -cpu Haswell`, Debian's `qemu-user`), so ONNX Runtime takes its AVX2
kernels, and compares it with the fp32 graph run natively: label agreement and the mean
and largest probability difference, beside the same figures for int8 run natively.

Emulation is slow (~150x): a few hundred rows take minutes, and its timings mean
nothing. The exit status is 1 when the emulated agreement is under --min-agreement.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

from marketpulse import cpu
from marketpulse.errors import MarketpulseError, first_line

QEMU = "qemu-x86_64"


def _score(
    variant: str, bundle: Path, texts: Path, out: Path, cpu_model: str | None, timeout: float
) -> None:
    """Probabilities of `variant` on the texts, in a child process (emulated if cpu_model)."""
    cmd = [sys.executable, "-m", "marketpulse.tools.isacheck", "--worker", variant]
    cmd += ["--bundle", str(bundle), "--texts", str(texts), "--out", str(out)]
    if cpu_model:
        cmd = [QEMU, "-cpu", cpu_model, *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MarketpulseError(
            f"scoring {variant} took over {timeout:.0f} s; check fewer texts (--rows)"
        ) from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if "TCG doesn't support" not in line]
        where = f"under {QEMU} -cpu {cpu_model}" if cpu_model else "natively"
        raise MarketpulseError(f"scoring {variant} {where} failed: {(lines or ['no output'])[-1]}")


def compare(reference: np.ndarray, probs: np.ndarray) -> dict:
    """Label agreement and probability differences of `probs` against `reference`."""
    diff = np.abs(probs - reference)
    return {
        "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
        "mean_prob_diff": float(diff.mean()),
        "max_prob_diff": float(diff.max()),
    }


def check(
    bundle: Path, texts: list[str], cpu_model: str = "Haswell", timeout: float = 3600
) -> dict:
    """fp32 and int8 natively, int8 under the emulated CPU; each int8 against fp32."""
    if shutil.which(QEMU) is None:
        raise MarketpulseError(
            f"{QEMU} not found; install Debian's qemu-user (apt-get install qemu-user) to "
            "emulate an AVX2-only CPU"
        )
    with tempfile.TemporaryDirectory(prefix="isacheck-") as tmp:
        work = Path(tmp)
        (work / "texts.json").write_text(json.dumps(texts))
        runs = {
            "fp32": ("fp32", None),
            "int8": ("int8", None),
            "int8_emulated": ("int8", cpu_model),
        }
        probs = {}
        for name, (variant, model) in runs.items():
            _score(variant, bundle, work / "texts.json", work / f"{name}.npy", model, timeout)
            probs[name] = np.load(work / f"{name}.npy")
    return {
        "rows": len(texts),
        "native_isa": cpu.isa(),
        "emulated_cpu": cpu_model,
        "int8_native": compare(probs["fp32"], probs["int8"]),
        "int8_emulated": compare(probs["fp32"], probs["int8_emulated"]),
        "int8_emulated_vs_native": compare(probs["int8"], probs["int8_emulated"]),
    }


def _worker(variant: str, bundle: Path, texts: Path, out: Path) -> None:
    from marketpulse.bundle import load_bundle
    from marketpulse.inference.predictor import Predictor

    # the graph's own kernels, without fp32 rescoring its hesitant rows
    predictor = Predictor(load_bundle(bundle), variant, "cpu", threads=1, rescore_margin=0)
    np.save(out, predictor.predict_proba(json.loads(texts.read_text())))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", type=click.Path(path_type=Path), help="The bundle to check.")
@click.option("--check-input", type=click.Path(path_type=Path), help="CSV/TSV/Parquet texts.")
@click.option(
    "--check-db", type=click.Path(path_type=Path), help="A DuckDB file, with --check-table."
)
@click.option("--check-table", help="The table or view in --check-db.")
@click.option("--check-text-col", default="text", show_default=True)
@click.option("--rows", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--cpu", "cpu_model", default="Haswell", show_default=True, help="QEMU CPU model.")
@click.option("--min-agreement", default=0.99, show_default=True, type=float)
@click.option("--out", type=click.Path(path_type=Path), help="Write the figures as JSON.")
@click.option("--worker", hidden=True)
@click.option("--texts", type=click.Path(path_type=Path), hidden=True)
def main(
    bundle,
    check_input,
    check_db,
    check_table,
    check_text_col,
    rows,
    cpu_model,
    min_agreement,
    out,
    worker,
    texts,
) -> None:
    from marketpulse.export.checks import CheckSource, read_check_sample

    try:
        if worker:
            return _worker(worker, bundle, texts, out)
        if bundle is None:
            raise MarketpulseError("pass --bundle BUNDLE (a directory made by marketpulse export)")
        source = CheckSource(check_input, check_db, check_table, check_text_col, rows)
        result = check(bundle, read_check_sample(source).texts, cpu_model)
    except MarketpulseError as exc:
        raise click.ClickException(first_line(exc)) from None
    click.echo(f"isa-check: {result['rows']} rows, native {result['native_isa']}")
    for name, label in (("int8_native", "native"), ("int8_emulated", f"-cpu {cpu_model}")):
        r = result[name]
        click.echo(
            f"  int8 ({label}) vs fp32: agreement {r['agreement']:.2%}, probability "
            f"difference mean {r['mean_prob_diff']:.5f}, max {r['max_prob_diff']:.4f}"
        )
    if out:
        out.write_text(json.dumps(result, indent=2))
    if result["int8_emulated"]["agreement"] < min_agreement:
        click.echo(f"isa-check: FAIL, emulated agreement under {min_agreement:.0%}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
