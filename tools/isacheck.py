"""`make isa-check`: does a bundle's int8 graph still agree with fp32 on an AVX2-only CPU?

    python -m marketpulse.tools.isacheck --bundle BUNDLE --input texts.csv [--text-col text]
        [--rows 300] [--cpu Haswell] [--min-agreement 0.99] [--out check.json]

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


def read_texts(input: Path, text_col: str, rows: int) -> list[str]:
    """The first `rows` non-blank texts of a CSV/TSV/Parquet file."""
    from marketpulse.sources import Flags, open_source
    from marketpulse.sql import quote_ident
    from marketpulse.text import blank_sql

    with open_source(input=input, require={"--text-col": text_col}, flags=Flags()) as rel:
        col = quote_ident(text_col)
        sql = f"SELECT {col} FROM {rel.name} WHERE NOT {blank_sql(col)} LIMIT ?"
        texts = [r[0] for r in rel.con.execute(sql, [rows]).fetchall()]
    if not texts:
        raise MarketpulseError(f"{input} has no non-blank text in column {text_col!r}")
    return texts


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

    predictor = Predictor(load_bundle(bundle), variant, "cpu", threads=1)
    np.save(out, predictor.predict_proba(json.loads(texts.read_text())))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", type=click.Path(path_type=Path), help="The bundle to check.")
@click.option("--input", "input_", type=click.Path(path_type=Path), help="CSV/TSV/Parquet texts.")
@click.option("--text-col", default="text", show_default=True)
@click.option("--rows", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--cpu", "cpu_model", default="Haswell", show_default=True, help="QEMU CPU model.")
@click.option("--min-agreement", default=0.99, show_default=True, type=float)
@click.option("--out", type=click.Path(path_type=Path), help="Write the figures as JSON.")
@click.option("--worker", hidden=True)
@click.option("--texts", type=click.Path(path_type=Path), hidden=True)
def main(bundle, input_, text_col, rows, cpu_model, min_agreement, out, worker, texts) -> None:
    try:
        if worker:
            return _worker(worker, bundle, texts, out)
        if bundle is None or input_ is None:
            raise MarketpulseError("pass --bundle BUNDLE and --input FILE (a text column)")
        result = check(bundle, read_texts(input_, text_col, rows), cpu_model)
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
