"""The `marketpulse` command line: parse flags, call a stage, report.

Every command is a thin function: parse flags, build the stage's config, call the
stage, print. Expected errors are MarketpulseError (one line, exit 1). Heavy imports
(torch, transformers, optimum) happen inside the commands that need them, so
`marketpulse --help` is instant and scoring never loads torch.
"""

from __future__ import annotations

import sys

import click

from marketpulse import __version__
from marketpulse import variants as registry
from marketpulse.errors import MarketpulseError, first_line
from marketpulse.sql import DEFAULT_STORAGE_VERSION


class _Group(click.Group):
    """Turns MarketpulseError into a one-line `Error: ...` and exit code 1.

    A DuckDB error that no stage turned into one (a view that fails when read, say) is
    one line too, naming DuckDB's own message; MARKETPULSE_DEBUG=1 keeps the traceback.
    """

    def invoke(self, ctx):
        import os

        try:
            return super().invoke(ctx)
        except MarketpulseError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:  # Ctrl-C outside `score` (which stops gracefully itself)
            click.echo("marketpulse: interrupted", err=True)
            ctx.exit(130)  # the shell's convention, as `score` exits: 128 + SIGINT
        except Exception as exc:
            if type(exc).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
                raise
            if os.environ.get("MARKETPULSE_DEBUG"):
                raise
            raise click.ClickException(
                f"DuckDB failed: {first_line(exc)}; check the tables, columns and filter "
                "named in the command (MARKETPULSE_DEBUG=1 shows where it failed)"
            ) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="marketpulse")
def main():
    """Turn market text in DuckDB tables into market signals.

    Example: marketpulse score --db news.duckdb --table news --id-col id --text-col text --bundle model/
    """


# --- train ---
def _source_options(labeled: bool = True):
    """Flags naming the input rows: labeled for `train` and `evaluate`, text only for `adapt`."""
    held, returned = ("labeled rows", "rows") if labeled else ("unlabeled text", "text")
    options = [
        click.option("--db", type=click.Path(dir_okay=False), help="DuckDB file to read from."),
        click.option("--table", help=f"Table (or view) in --db holding the {held}."),
        click.option(
            "--query", help=f"SQL SELECT returning the {returned} (runs on --db, or in memory)."
        ),
        click.option(
            "--input",
            "input_path",
            type=click.Path(dir_okay=False),
            help="CSV/TSV/Parquet file, read through DuckDB.",
        ),
        click.option("--text-col", default="text", show_default=True, help="Column with the text."),
    ]
    if labeled:
        options += [
            click.option(
                "--label-col", default="label", show_default=True, help="Column with the label."
            ),
            click.option(
                "--label-names",
                help="Names for integer labels 0,1,2..., e.g. bearish,bullish,neutral.",
            ),
        ]

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


# Training precision, shared by `train` and `adapt`.
_precision_option = click.option(
    "--precision",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "fp32", "bf16"]),
    help="auto: bf16 autocast where the CPU (AVX512-BF16, AMX) or GPU has native bf16.",
)
_keep_urls_option = click.option(
    "--keep-urls",
    is_flag=True,
    help="Tokenize web addresses as written [default: the model reads each as one token].",
)


def _data_source(db, table, query, input_path, text_col, label_col, label_names):
    from marketpulse.train.data import DataSource, parse_label_names

    if sum(x is not None for x in (table, query, input_path)) != 1:
        raise click.UsageError("pass exactly one of --table, --query or --input")
    if table and not db:
        raise click.UsageError("--table needs --db FILE")
    if input_path and db:
        raise click.UsageError("--input reads a file; drop --db (or use --query to join them)")
    return DataSource(
        db=db,
        table=table,
        query=query,
        input=input_path,
        text_col=text_col,
        label_col=label_col,
        label_names=parse_label_names(label_names),
    )


@main.command()
@_source_options()
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory."
)
@click.option(
    "--base-model", help="Local BERT-family checkpoint dir [default: bundled all-MiniLM-L6-v2]."
)
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(8, 512))
@click.option(
    "--epochs",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Most epochs; training stops sooner once validation macro-F1 stops improving.",
)
@click.option(
    "--learning-rate", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True)
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--warmup-ratio", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--weight-decay", default=0.01, show_default=True, type=click.FloatRange(min=0))
@click.option("--seed", default=42, show_default=True, type=int)
@click.option(
    "--split",
    "split_",
    default="0.8,0.1,0.1",
    show_default=True,
    help="TRAIN,VALIDATION,TEST fractions.",
)
@click.option(
    "--patience",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Epochs without a better validation macro-F1 before stopping.",
)
@click.option("--class-weights", is_flag=True, help="Weight the loss by inverse class frequency.")
@_keep_urls_option
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@_precision_option
@click.option(
    "--tune",
    is_flag=True,
    help="Search learning rate, epochs, batch size and warmup with Optuna; keep the best trial.",
)
@click.option("--tune-trials", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--tune-minutes",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="No trial starts after this (the running one finishes).",
)
@click.option(
    "--tune-max-epochs",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Trials run from a third of this up to this many epochs.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print metrics.json to stdout instead of the table."
)
def train(
    db,
    table,
    query,
    input_path,
    text_col,
    label_col,
    label_names,
    out,
    base_model,
    max_length,
    epochs,
    learning_rate,
    batch_size,
    warmup_ratio,
    weight_decay,
    seed,
    split_,
    patience,
    class_weights,
    keep_urls,
    device,
    precision,
    tune,
    tune_trials,
    tune_minutes,
    tune_max_epochs,
    as_json,
):
    """Fine-tune a BERT-family text classifier on labeled rows.

    Example: marketpulse train --input train.csv --label-names bearish,bullish,neutral --out model/
    """
    import json
    from pathlib import Path

    from marketpulse.train import TrainConfig, run
    from marketpulse.train.split import parse_fractions, rescale_note
    from marketpulse.train.trainer import format_summary

    _check_tune_flags(tune)
    source = _data_source(db, table, query, input_path, text_col, label_col, label_names)
    note = rescale_note(split_)
    if note:
        click.echo(note, err=True)
    cfg = TrainConfig(
        source=source,
        out=Path(out),
        base_model=base_model,
        max_length=max_length,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        seed=seed,
        split=parse_fractions(split_),
        early_stopping_patience=patience,
        class_weights=class_weights,
        normalize_urls=not keep_urls,
        device=device,
        precision=precision,
    )
    if tune:
        from marketpulse.train.config import TuneConfig
        from marketpulse.train.tune import run as run_tuned

        bounds = TuneConfig(trials=tune_trials, minutes=tune_minutes, max_epochs=tune_max_epochs)
        metrics = run_tuned(cfg, bounds).metrics
    else:
        metrics = run(cfg).metrics
    click.echo(json.dumps(metrics, indent=2) if as_json else format_summary(metrics))


def _check_tune_flags(tune: bool) -> None:
    """A searched flag given with --tune, or a --tune-* flag without it, would be ignored."""
    ctx = click.get_current_context()

    def given(names):
        return [
            f"--{n.replace('_', '-')}"
            for n in names
            if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT
        ]

    if tune and (searched := given(("epochs", "learning_rate", "batch_size", "warmup_ratio"))):
        raise click.UsageError(
            f"--tune searches {', '.join(searched)}; drop it (bound epochs with --tune-max-epochs)"
        )
    if not tune and (unused := given(("tune_trials", "tune_minutes", "tune_max_epochs"))):
        raise click.UsageError(f"{', '.join(unused)} applies with --tune only; add --tune")


@main.command()
@click.option(
    "--model",
    required=True,
    type=click.Path(file_okay=False),
    help="Checkpoint dir (train) or bundle dir (export).",
)
@click.option(
    "--variant",
    type=click.Choice(registry.NAMES),
    help="Bundle graph to score with [default: the runtime's choice].",
)
@_source_options()
@click.option(
    "--name", help="Report name of the --table/--query/--input rows [default: table or file stem]."
)
@click.option(
    "--domain",
    "domain_specs",
    multiple=True,
    metavar="NAME=SOURCE",
    help="Another labeled domain (repeatable): a CSV/TSV/Parquet path or a SELECT "
    "(on --db, or in memory) giving --text-col and --label-col; adds a summary with gaps.",
)
@click.option(
    "--label-map",
    "label_maps",
    multiple=True,
    metavar="[DOMAIN:]FROM=TO,...",
    help="Rename labels onto the model's, e.g. positive=bullish,negative=bearish (repeatable).",
)
@click.option(
    "--out", type=click.Path(dir_okay=False), help="Also write the metrics to this JSON file."
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max-length",
    type=click.IntRange(8, 512),
    help="Checkpoints: token limit [default: the one trained with].",
)
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the metrics as JSON instead of the table."
)
def evaluate(
    model,
    variant,
    db,
    table,
    query,
    input_path,
    text_col,
    label_col,
    label_names,
    name,
    domain_specs,
    label_maps,
    out,
    batch_size,
    max_length,
    device,
    as_json,
):
    """Score a labeled table with a checkpoint or bundle and report accuracy and F1.

    Example: marketpulse evaluate --model model/ --input valid.csv --label-names bearish,bullish,neutral --out eval.json
    """
    import json
    from pathlib import Path

    from marketpulse.train import evaluate as stage

    if out and not Path(out).resolve().parent.is_dir():  # before minutes of scoring
        raise click.UsageError(
            f"--out {out}: folder {Path(out).resolve().parent} does not exist; create it first"
        )
    source = None
    if not domain_specs or any(x is not None for x in (table, query, input_path)):
        source = _data_source(db, table, query, input_path, text_col, label_col, label_names)
    elif name or label_names:
        raise click.UsageError("--name and --label-names describe --table/--query/--input rows")
    domains = stage.build_domains(
        source, name, domain_specs, label_maps, db=db, text_col=text_col, label_col=label_col
    )
    options = dict(variant=variant, device=device, batch_size=batch_size, max_length=max_length)
    if domain_specs:
        result = stage.evaluate_domains(model, domains, **options)
        report = stage.format_domains_report
    else:
        label_map = dict(domains[0].label_map)
        result = stage.evaluate(model, source, label_map=label_map, **options)
        report = stage.format_report
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result, indent=2) if as_json else report(result))


@main.command()
@_source_options(labeled=False)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint in --out.")
@click.option(
    "--base-model", help="Local BERT-family checkpoint dir [default: bundled all-MiniLM-L6-v2]."
)
@click.option(
    "--epochs", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True)
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    help="Use at most this many distinct texts, sampled by --seed [default: all].",
)
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(8, 512))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--learning-rate", default=5e-5, show_default=True, type=click.FloatRange(min=0, min_open=True)
)
@click.option(
    "--mlm-probability",
    default=0.15,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of tokens masked.",
)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@_precision_option
@_keep_urls_option
@click.option("--json", "as_json", is_flag=True, help="Print adapt.json to stdout.")
def adapt(
    db,
    table,
    query,
    input_path,
    text_col,
    out,
    overwrite,
    base_model,
    epochs,
    max_rows,
    max_length,
    batch_size,
    learning_rate,
    mlm_probability,
    seed,
    device,
    precision,
    keep_urls,
    as_json,
):
    """Continue the encoder's masked-LM pre-training on the unlabeled text to be scored.

    Example: marketpulse adapt --db news.duckdb --table news --text-col body --out adapted/ (then train --base-model adapted/)
    """
    import json
    from pathlib import Path

    from marketpulse.train.adapt import MIN_TEXTS, AdaptConfig, format_summary, read_record, run

    source = _data_source(db, table, query, input_path, text_col, "label", None)
    if max_rows is not None and max_rows < MIN_TEXTS:
        raise click.UsageError(f"--max-rows must be at least {MIN_TEXTS}")
    cfg = AdaptConfig(
        source=source,
        out=Path(out),
        base_model=base_model,
        epochs=epochs,
        max_rows=max_rows,
        max_length=max_length,
        batch_size=batch_size,
        learning_rate=learning_rate,
        mlm_probability=mlm_probability,
        seed=seed,
        device=device,
        precision=precision,
        normalize_urls=not keep_urls,
        overwrite=overwrite,
    )
    record = read_record(run(cfg))
    click.echo(json.dumps(record, indent=2) if as_json else format_summary(record, Path(out)))


# --- export ---
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


@main.command("export")
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
    bundle = run(cfg)
    click.echo(
        json.dumps(bundle.manifest, indent=2)
        if as_json
        else format_manifest(bundle.path, bundle.manifest)
    )


@main.command("inspect")
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


# --- runtime ---
@main.command()
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="Source DuckDB file.")
@click.option("--table", required=True, help="Table (or view) holding the texts.")
@click.option("--id-col", required=True, help="Unique, non-NULL key column.")
@click.option("--text-col", required=True, help="VARCHAR column to classify.")
@click.option("--bundle", required=True, type=click.Path(file_okay=False), help="Bundle dir.")
@click.option(
    "--results-db", type=click.Path(dir_okay=False), help="Write results here [default: --db]."
)
@click.option("--results-table", default="scores", show_default=True)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    envvar="MARKETPULSE_DEVICE",
    help="cpu runs --variant auto's pick, cuda runs fp16; auto takes CUDA when it works.",
)
@click.option(
    "--variant",
    type=click.Choice(registry.CHOICES),
    default=registry.AUTO,
    show_default=True,
    help="The graph to run. auto: on CPU the fastest graph that passed export's gate, "
    "timed once per model and machine (cached in --cache-dir), and fp32 instead if that "
    "graph disagrees with fp32 on more than 1% of --auto-check-rows of the rows to score; "
    "on CUDA fp16.",
)
@click.option(
    "--auto-check-rows",
    type=click.IntRange(min=0),
    default=512,
    show_default=True,
    help="Rows to score (a hash sample) that --variant auto scores with its quantized pick "
    "and with fp32 before the run; 0: off (export's gate alone decides).",
)
@click.option(
    "--rescore-margin",
    type=click.FloatRange(0, 1, max_open=True),
    help="int8 rows whose top two probabilities are closer than this are rescored by fp32; "
    "0: int8 alone [default: the bundle's, from export].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    envvar="MARKETPULSE_CACHE",
    help="Where --variant auto keeps its timings [default: ~/.cache/marketpulse].",
)
@click.option(
    "--canary-rows",
    type=click.IntRange(min=0),
    default=256,
    show_default=True,
    help="Scored rows sampled and rescored by the fp32 graph to measure how often the "
    "graph that ran disagrees with it (runs.canary_disagree_share); 0: off.",
)
@click.option("--limit", type=click.IntRange(min=0), help="Score at most N pending rows.")
@click.option(
    "--where",
    help="Filter on the table's own columns, e.g. \"lang = 'en' AND posted_at >= DATE "
    "'2024-01-01'\". Comparisons, AND/OR/NOT, IN, BETWEEN, LIKE, IS NULL, casts and simple "
    "functions only; no subqueries or other tables; values are sent as parameters.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    envvar="MARKETPULSE_THREADS",
    help="CPU batches run at once, one core each [default: all cores].",
)
@click.option(
    "--batch-tokens",
    type=click.IntRange(min=64),
    help="Padded tokens per inference batch [default: 1024 on CPU (512 with AMX), 32768 on CUDA].",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Rows per committed chunk (and per length-sorting window).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    envvar="MARKETPULSE_ENGINE",
    help="local: this process. ray: a Ray Data actor pool (pip install 'marketpulse[ray]').",
)
@click.option(
    "--ray-address",
    envvar="MARKETPULSE_RAY_ADDRESS",
    help="Ray cluster to join: auto (run on a node after `ray start`) or HEAD_IP:6379 "
    "[default: start a local one].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Ray scorer actors [default: one per GPU, or one per CPU but one].",
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="GPUs per Ray actor; above 0 the actors run the fp16 graph on CUDA.",
)
@click.option(
    "--stage-dir",
    type=click.Path(file_okay=False),
    help="Where --engine ray stages pending rows as Parquet; on a multi-node cluster a path "
    "every node can read [default: system temp dir].",
)
@click.option(
    "--ray-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds --engine ray may go without a scored batch coming back (start-up "
    "included) before the run fails [default: 600].",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=3600,
    show_default=True,
    envvar="MARKETPULSE_LOCK_TIMEOUT",
    help="Seconds a commit waits for readers holding the database file before the run fails.",
)
@click.option(
    "--commit-seconds",
    type=click.FloatRange(min=0),
    default=5,
    show_default=True,
    help="Commit scored chunks at most this often; readers wait at most one commit.",
)
@click.option(
    "--storage-version",
    default=DEFAULT_STORAGE_VERSION,
    show_default=True,
    envvar="MARKETPULSE_STORAGE_VERSION",
    help="DuckDB storage format of a --results-db this run creates (an existing file keeps "
    "its own); the default opens in DuckDB 1.x clients. 'latest' for DuckDB's newest.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
def score(
    db,
    table,
    id_col,
    text_col,
    bundle,
    results_db,
    results_table,
    device,
    variant,
    cache_dir,
    canary_rows,
    auto_check_rows,
    rescore_margin,
    limit,
    where,
    threads,
    batch_tokens,
    chunk_rows,
    engine,
    ray_address,
    workers,
    gpus_per_worker,
    stage_dir,
    ray_timeout,
    lock_timeout,
    commit_seconds,
    storage_version,
    as_json,
):
    """Classify every not-yet-scored row of a DuckDB table; resumable.

    Example: marketpulse score --db news.duckdb --table news --id-col id --text-col text --bundle bundle/
    """
    import json
    from pathlib import Path

    from marketpulse.runtime import ScoreConfig
    from marketpulse.runtime import score as run_score
    from marketpulse.runtime.runs import Interrupted

    ray_flags = (ray_address, workers, gpus_per_worker, stage_dir, ray_timeout)
    if engine == "local" and any(ray_flags):
        raise click.UsageError(
            "--ray-address, --workers, --gpus-per-worker, --stage-dir and --ray-timeout "
            "need --engine ray"
        )
    if engine == "ray":
        from functools import partial

        from marketpulse.runtime.ray_engine import score_with_ray

        run_score = partial(
            score_with_ray,
            ray_address=ray_address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            stage_dir=Path(stage_dir) if stage_dir else None,
            **({"timeout_s": ray_timeout} if ray_timeout else {}),
        )
    cfg = ScoreConfig(
        db=Path(db),
        table=table,
        id_col=id_col,
        text_col=text_col,
        bundle=Path(bundle),
        results_db=Path(results_db) if results_db else None,
        results_table=results_table,
        device=device,
        variant=variant,
        cache_dir=Path(cache_dir) if cache_dir else None,
        canary_rows=canary_rows,
        auto_check_rows=auto_check_rows,
        rescore_margin=rescore_margin,
        limit=limit,
        where=where,
        threads=threads,
        batch_tokens=batch_tokens,
        chunk_rows=chunk_rows,
        lock_timeout=lock_timeout,
        commit_seconds=commit_seconds,
        storage_version=storage_version,
    )
    try:
        stats = run_score(cfg)
    except Interrupted as exc:  # SIGTERM / SIGINT: the chunk in hand was committed
        if exc.stats is not None:
            click.echo(exc.stats.summary(), err=True)
        click.echo(f"stopped by {exc}; rerun the same command to score the rest", err=True)
        sys.exit(exc.exit_code)
    click.echo(stats.summary(), err=as_json)
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2))


@main.command()
@click.option("--bundle", required=True, type=click.Path(file_okay=False), help="Bundle dir.")
@click.option("--text", "texts", multiple=True, help="A text to explain (repeatable).")
@click.option("--db", type=click.Path(dir_okay=False), help="DuckDB file holding the texts.")
@click.option("--table", help="Table (or view) holding the texts.")
@click.option("--id-col", help="Unique key column.")
@click.option("--text-col", help="VARCHAR column to explain.")
@click.option("--where", help="Filter on the table's own columns, as for score.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--top", default=5, show_default=True, type=click.IntRange(min=1), help="Words listed."
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True
)
@click.option(
    "--variant",
    type=click.Choice(registry.NAMES),
    help="Graph to explain with [default: per row, the graph that scored it (runs.variant), "
    "else the CPU preference].",
)
@click.option(
    "--results-db",
    type=click.Path(dir_okay=False),
    help="File score wrote the rows' scores to [default: --db].",
)
@click.option(
    "--results-table",
    default="scores",
    show_default=True,
    help="Scores table that says which graph scored each row.",
)
def explain(
    bundle,
    texts,
    db,
    table,
    id_col,
    text_col,
    where,
    limit,
    top,
    device,
    variant,
    results_db,
    results_table,
):
    """Show which words decided each label (leave-one-word-out on the ONNX graph).

    Example: marketpulse explain --bundle bundle/ --text "Apple beats estimates, shares jump"
    """
    from pathlib import Path

    table_flags = (db, table, id_col, text_col)
    if texts and any(table_flags):
        raise click.UsageError("pass --text, or --db --table --id-col --text-col, not both")
    if not texts and not all(table_flags):
        raise click.UsageError("pass --text, or all of --db --table --id-col --text-col")
    if texts and (where or results_db):
        raise click.UsageError("--where and --results-db need --db --table --id-col --text-col")

    def show(row_id, e, words):
        label = f"{row_id}: " if row_id is not None else ""
        click.echo(f"{label}{e.label} ({e.probability:.2f})  {_highlight(e, words)}")
        best = sorted(zip(words, e.words, strict=True), key=lambda p: -p[1].weight)[:top]
        click.echo("    top words: " + ", ".join(f"{_clip(w)} {x.weight:+.3f}" for w, x in best))

    if texts:
        from marketpulse.inference.explain import explain as explain_texts
        from marketpulse.inference.predictor import Predictor
        from marketpulse.runtime.explanations import masked_words
        from marketpulse.text import is_blank

        for text in texts:
            if is_blank(text):
                click.echo(f"{text!r}: blank text, skipped (nothing to label)", err=True)
        texts = [t for t in texts if not is_blank(t)]
        if not texts:
            return
        predictor = Predictor(Path(bundle), variant=variant, device=device)
        for e in explain_texts(predictor, texts):
            show(None, e, masked_words(e))
        return
    from marketpulse.runtime.explanations import ExplainConfig, explain_table

    cfg = ExplainConfig(
        db=Path(db),
        table=table,
        id_col=id_col,
        text_col=text_col,
        bundle=Path(bundle),
        where=where,
        limit=limit,
        device=device,
        variant=variant,
        results_db=Path(results_db) if results_db else None,
        results_table=results_table,
    )
    stats = explain_table(cfg, on_row=show)
    click.echo(stats.summary(results_db or db), err=True)


def _clip(word: str, width: int = 40) -> str:
    """A word as explain prints it: at most `width` characters (a 20,000-character run
    without spaces, or a CJK paragraph, is one word)."""
    return word if len(word) <= width else word[: width - 1] + "\u2026"


def _highlight(e, words: list[str]) -> str:
    """The weighed words: green supports the label, red argues against; bold = strong.

    Words past those the model reads (or past explain's word cap) weigh nothing and are
    counted, not printed: a 100 KB post would otherwise fill the terminal."""
    scale = max((abs(w.weight) for w in e.words), default=0.0) or 1.0
    out = []
    shown = max(e.occluded, 1)
    for word, w in zip(words[:shown], e.words[:shown], strict=True):
        strength = abs(w.weight) / scale
        word = _clip(word)
        if strength < 0.2:
            out.append(word)
        else:
            color = "green" if w.weight > 0 else "red"
            out.append(click.style(word, fg=color, bold=strength >= 0.6))
    if len(words) > shown:
        out.append(click.style(f"... (+{len(words) - shown} words not weighed)", dim=True))
    return " ".join(out)


@main.command("sql")
@click.argument("query")
@click.option(
    "--db", required=True, type=click.Path(dir_okay=False), help="DuckDB file, opened read-only."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the rows as a JSON list of objects (strict JSON: NaN and infinities null, "
    "lists and structs nested, dates ISO 8601, BLOBs hex).",
)
@click.option("--csv", "as_csv", is_flag=True, help="Print the rows as CSV with a header.")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=60,
    show_default=True,
    help="Seconds to keep retrying the open while a scoring run commits.",
)
def sql_(query, db, as_json, as_csv, lock_timeout):
    """Run read-only SQL (one or more statements) on a DuckDB file, waiting out a scoring
    run's commits. Every statement that returns rows prints its table, in order; --json
    and --csv print one result set.

    Example: marketpulse sql "SELECT label, count(*) FROM scores GROUP BY label" --db market.duckdb --csv
    """
    from pathlib import Path

    from marketpulse.query import format_results, run_queries

    if as_json and as_csv:
        raise click.UsageError("pass at most one of --json and --csv")
    style = "json" if as_json else "csv" if as_csv else "table"
    one_result = None if style == "table" else f"--{style}"
    results = run_queries(Path(db), query, lock_timeout, one_result=one_result)
    click.echo(format_results(results, style))


# --- trends ---
@main.command()
@click.option(
    "--db",
    required=True,
    type=click.Path(dir_okay=False),
    help="DuckDB file with the source (and the scores, unless --results-db); the trend "
    "tables are written here.",
)
@click.option("--source", required=True, help="Table (or view) holding the scored rows.")
@click.option("--id-col", required=True, help="Id column of the source (matches scores.id).")
@click.option(
    "--time-col",
    required=True,
    help="DATE, TIMESTAMP, TIMESTAMPTZ or ISO-8601 text column to bucket by (buckets are UTC; "
    "text with an offset counts at its UTC instant).",
)
@click.option(
    "--text-col",
    help="Text column of the source: explain each flagged shift by its over-represented "
    "words (table trend_drivers_<source>_<grain>).",
)
@click.option("--by", default="", help="Comma-separated group columns, e.g. brand,region.")
@click.option(
    "--grain", type=click.Choice(["day", "week", "month"]), default="week", show_default=True
)
@click.option(
    "--window",
    type=click.IntRange(3, 104),
    default=8,
    show_default=True,
    help="Buckets in the rolling/trailing window (a z-score needs 3).",
)
@click.option(
    "--horizon",
    type=click.IntRange(0, 52),
    default=4,
    show_default=True,
    help="Buckets ahead to forecast (table forecast_<source>_<grain>); 0: no forecasts.",
)
@click.option(
    "--positive",
    help="Label counted as positive; several, comma-separated, for graded labels, e.g. "
    '"positive,very positive" [default: positive or bullish, in any letter case, '
    "paired with --negative from the same model].",
)
@click.option(
    "--negative",
    help="Label counted as negative; several, comma-separated, for graded labels "
    "[default: negative or bearish, in any letter case].",
)
@click.option("--scores-table", default="scores", show_default=True)
@click.option(
    "--results-db",
    type=click.Path(dir_okay=False),
    help="DuckDB file `score --results-db` wrote the scores and models tables to, opened "
    "read-only [default: --db]; the trend tables still go to --db.",
)
@click.option(
    "--trend-table",
    help="Name of the trend table (default trend_<source>_<grain>, <source> being "
    "schema_table outside main); its forecast, backtest and drivers tables are named after "
    "it (forecast_<name without trend_>, ...).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=0.01,
    show_default=True,
    help="False-alarm probability per bucket check: is_shift when p_value <= alpha.",
)
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the trend table as CSV."
)
@click.option(
    "--parquet", type=click.Path(dir_okay=False), help="Also write the trend table as Parquet."
)
@click.option(
    "--plot", type=click.Path(dir_okay=False), help="Draw the index per group to this PNG."
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=600,
    show_default=True,
    envvar="MARKETPULSE_LOCK_TIMEOUT",
    help="Seconds to wait while another process (a scoring run's commit) holds --db or "
    "--results-db before the run fails.",
)
def trends(
    db,
    source,
    id_col,
    time_col,
    text_col,
    by,
    grain,
    window,
    horizon,
    positive,
    negative,
    scores_table,
    results_db,
    trend_table,
    alpha,
    csv_path,
    parquet,
    plot,
    as_json,
    lock_timeout,
):
    """Build SQL-queryable sentiment trends (volume, index, shifts, forecast) from scores.

    Example: marketpulse trends --db market.duckdb --source posts --id-col id --time-col posted_at --by brand --plot trends.png
    """
    from pathlib import Path

    from marketpulse.trends import TrendsConfig, format_report, run, summary

    cfg = TrendsConfig(
        db=Path(db),
        source=source,
        id_col=id_col,
        time_col=time_col,
        by=tuple(c.strip() for c in by.split(",") if c.strip()),
        grain=grain,
        window=window,
        horizon=horizon,
        text_col=text_col,
        positive=positive,
        negative=negative,
        scores_table=scores_table,
        results_db=Path(results_db) if results_db else None,
        alpha=alpha,
        trend_table=trend_table,
        csv=csv_path and Path(csv_path),
        parquet=parquet and Path(parquet),
        plot=plot and Path(plot),
        lock_timeout=lock_timeout,
    )
    result = run(cfg)
    if as_json:
        import json

        click.echo(json.dumps(summary(result), indent=2))
        return
    click.echo(format_report(result))
    for kind, path in result.outputs.items():
        click.echo(f"wrote {kind}: {path}")
