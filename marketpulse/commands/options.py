"""Option helpers shared by several commands: the flags naming a labeled (or unlabeled)
input, training precision and URL handling, and the check that turns those flags into a
train DataSource. Used by `train`, `evaluate` and `adapt`."""

from __future__ import annotations

import click


def source_options(labeled: bool = True):
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
precision_option = click.option(
    "--precision",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "fp32", "bf16"]),
    help="auto: bf16 autocast where the CPU (AVX512-BF16, AMX) or GPU has native bf16.",
)
keep_urls_option = click.option(
    "--keep-urls",
    is_flag=True,
    help="Tokenize web addresses as written [default: the model reads each as one token].",
)


def data_source(db, table, query, input_path, text_col, label_col, label_names):
    from marketpulse.train.data import DataSource
    from marketpulse.train.labels import parse_label_names

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
