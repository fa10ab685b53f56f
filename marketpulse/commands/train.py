"""The train stage's commands: `train` (fine-tune), `evaluate` (accuracy and F1 of a
checkpoint or bundle, per domain) and `adapt` (masked-LM pre-training on unlabeled text).

torch and transformers load inside each command, never at import."""

from __future__ import annotations

import click

from marketpulse import variants as registry
from marketpulse.commands.options import (
    data_source,
    keep_urls_option,
    precision_option,
    source_options,
)
from marketpulse.owned_folders import stop_on_sigterm


@click.command()
@source_options()
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
@keep_urls_option
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@precision_option
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
    source = data_source(db, table, query, input_path, text_col, label_col, label_names)
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
    # SIGTERM (a scheduler's timeout) cleans up as Ctrl-C does, and exits 143
    with stop_on_sigterm(cfg.out, "checkpoint"):
        if tune:
            from marketpulse.train.config import TuneConfig
            from marketpulse.train.tune import run as run_tuned

            bounds = TuneConfig(
                trials=tune_trials, minutes=tune_minutes, max_epochs=tune_max_epochs
            )
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


@click.command()
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
@source_options()
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
    from marketpulse.train.eval_domains import build_domains
    from marketpulse.train.eval_report import format_domains_report, format_report

    if out and not Path(out).resolve().parent.is_dir():  # before minutes of scoring
        raise click.UsageError(
            f"--out {out}: folder {Path(out).resolve().parent} does not exist; create it first"
        )
    source = None
    if not domain_specs or any(x is not None for x in (table, query, input_path)):
        source = data_source(db, table, query, input_path, text_col, label_col, label_names)
    elif name or label_names:
        raise click.UsageError("--name and --label-names describe --table/--query/--input rows")
    domains = build_domains(
        source, name, domain_specs, label_maps, db=db, text_col=text_col, label_col=label_col
    )
    options = dict(variant=variant, device=device, batch_size=batch_size, max_length=max_length)
    if domain_specs:
        result = stage.evaluate_domains(model, domains, **options)
        report = format_domains_report
    else:
        label_map = dict(domains[0].label_map)
        result = stage.evaluate(model, source, label_map=label_map, **options)
        report = format_report
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result, indent=2) if as_json else report(result))


@click.command()
@source_options(labeled=False)
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
@precision_option
@keep_urls_option
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

    source = data_source(db, table, query, input_path, text_col, "label", None)
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
    with stop_on_sigterm(cfg.out, "adapted checkpoint"):  # cleans up as Ctrl-C does
        record = read_record(run(cfg))
    click.echo(json.dumps(record, indent=2) if as_json else format_summary(record, Path(out)))
