"""The export stage's commands: `export` (checkpoint to a gated ONNX bundle) and
`inspect` (print a bundle's manifest and verify its file hashes).

optimum and torch load inside `export`, never at import."""

from __future__ import annotations

import click

from marketpulse import variants as registry
from marketpulse.errors import MarketpulseError
from marketpulse.owned_folders import stop_on_sigterm


def _parse_variants(ctx, param, value):
    try:
        return registry.parse(tuple(v.strip() for v in value.split(",") if v.strip()))
    except MarketpulseError as exc:
        raise click.BadParameter(str(exc)) from None


def _check_source(check_input, check_db, check_table, check_text_col, check_rows):
    """The check texts' CheckSource, or None; bad flag combinations are usage errors."""
    from pathlib import Path

    from marketpulse.export.checks import CHECK_ROWS, CheckSource

    if check_input is None and check_db is None and check_table is None:
        if check_text_col is not None or check_rows is not None:
            raise click.UsageError(
                "--check-text-col and --check-rows describe check texts; pass --check-input "
                "FILE or --check-db DB --check-table T (cap the test split with --test-rows)"
            )
        return None
    try:
        return CheckSource(
            input=Path(check_input) if check_input else None,
            db=Path(check_db) if check_db else None,
            table=check_table,
            text_col=check_text_col or "text",
            rows=check_rows or CHECK_ROWS,
        )
    except MarketpulseError as exc:
        raise click.UsageError(str(exc)) from None


@click.command("export")
@click.option(
    "--model", required=True, type=click.Path(file_okay=False), help="Checkpoint dir from train."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory.")
@click.option(
    "--variants",
    default=",".join(registry.NAMES),
    show_default=True,
    callback=_parse_variants,
    help="Graphs to write: " + ", ".join(v.help for v in registry.VARIANTS.values()) + ".",
)
@click.option(
    "--min-agreement",
    default=0.99,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Least top-1 agreement with PyTorch per variant, on the test split and check texts.",
)
@click.option(
    "--max-f1-drop",
    default=0.01,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Largest macro-F1 drop vs PyTorch per variant.",
)
@click.option(
    "--allow-accuracy-drop",
    is_flag=True,
    help="Publish even if a variant fails the gate on the test split (it is marked failed).",
)
@click.option(
    "--optimization",
    type=click.Choice(["none", "O1", "O2", "O3"]),
    default="O1",
    show_default=True,
    help="ORT graph optimization applied offline.",
)
@click.option(
    "--int8-order",
    type=click.Choice(["optimize-then-quantize", "quantize-then-optimize"]),
    default="optimize-then-quantize",
    show_default=True,
    help="Whether int8 is quantized from the optimized graph or optimized after.",
)
@click.option(
    "--int8-isa",
    type=click.Choice(["auto", "avx512_vnni", "avx512", "avx2", "arm64"]),
    default="auto",
    show_default=True,
    help="CPU kind the int8 graph is quantized for; auto: this machine's. Pass the scoring "
    "machines' kind when it differs (avx2 keeps 7-bit weights, right on every x86 CPU).",
)
@click.option(
    "--rescore-margin",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="int8 rows whose top two probabilities are closer than this are rescored by the "
    "fp32 graph, at scoring and at the gate; 0: never.",
)
@click.option(
    "--opset",
    default=18,
    show_default=True,
    type=click.IntRange(14, 21),
    help="ONNX opset of the exported graphs.",
)
@click.option(
    "--max-length",
    type=click.IntRange(8, 512),
    help="Token limit [default: the checkpoint's, else 128].",
)
@click.option(
    "--test-rows", type=click.IntRange(min=1), help="Check on at most this many test rows."
)
@click.option(
    "--check-input",
    type=click.Path(dir_okay=False),
    help="CSV/TSV/Parquet of unlabeled texts like those to be scored, also gated.",
)
@click.option(
    "--check-db", type=click.Path(dir_okay=False), help="DuckDB file holding --check-table."
)
@click.option("--check-table", help="Table (or view) of check texts in --check-db.")
@click.option("--check-text-col", help="Column of the check texts [default: text].")
@click.option(
    "--check-rows",
    type=click.IntRange(min=1),
    help="Sample size of the check texts, the same rows each run [default: 2000].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_(
    model,
    out,
    variants,
    min_agreement,
    max_f1_drop,
    allow_accuracy_drop,
    optimization,
    int8_order,
    int8_isa,
    rescore_margin,
    opset,
    max_length,
    test_rows,
    check_input,
    check_db,
    check_table,
    check_text_col,
    check_rows,
    as_json,
):
    """Export a checkpoint to a checked ONNX bundle (fp32, int8, fp16 graphs).

    Example: marketpulse export --model model/ --out bundle/ --variants fp32,int8
    """
    import json
    from pathlib import Path

    from marketpulse.export import ExportConfig, run
    from marketpulse.export.summary import format_manifest

    cfg = ExportConfig(
        model=Path(model),
        out=Path(out),
        variants=variants,
        min_agreement=min_agreement,
        max_f1_drop=max_f1_drop,
        allow_accuracy_drop=allow_accuracy_drop,
        optimization=optimization,
        int8_order=int8_order,
        int8_isa=int8_isa,
        rescore_margin=rescore_margin,
        opset=opset,
        max_length=max_length,
        test_rows=test_rows,
        check_source=_check_source(check_input, check_db, check_table, check_text_col, check_rows),
    )
    with stop_on_sigterm(cfg.out, "bundle"):  # SIGTERM cleans up as Ctrl-C does, exits 143
        bundle = run(cfg)
    click.echo(
        json.dumps(bundle.manifest, indent=2)
        if as_json
        else format_manifest(bundle.path, bundle.manifest)
    )


@click.command("inspect")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def inspect_(bundle_dir, as_json):
    """Print a bundle's manifest and verify the sha256 of every file.

    Example: marketpulse inspect bundle/
    """
    import json
    from pathlib import Path

    from marketpulse.bundle import read_manifest, verify_bundle
    from marketpulse.export.summary import format_manifest

    path = Path(bundle_dir)
    if not path.is_dir():
        raise MarketpulseError(
            f"{path} is not a directory; pass a bundle made by `marketpulse export`"
        )
    manifest = read_manifest(path)
    problems = verify_bundle(path)
    if problems:
        raise MarketpulseError(
            f"bundle {path} is corrupt ({'; '.join(problems)}); re-export it with `marketpulse export`"
        )
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    else:
        click.echo(format_manifest(path, manifest))
        click.echo(f"all {len(manifest['files'])} file hashes verified")
