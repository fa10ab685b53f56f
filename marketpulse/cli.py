"""The `marketpulse` command line: parse flags, call a stage, report.

Each stage owns its commands in `<stage>/cli.py`; this module only groups them.
Heavy imports (torch, transformers, optimum) happen inside the commands that need
them, so `marketpulse --help` is instant and scoring never loads torch.
"""

from __future__ import annotations

import click

from marketpulse import __version__
from marketpulse.errors import MarketpulseError


class _Group(click.Group):
    """Turns MarketpulseError into a one-line `Error: ...` and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MarketpulseError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="marketpulse")
def main():
    """Turn market text in DuckDB tables into market signals.

    Example: marketpulse score --db news.duckdb --table news --id-col id --text-col text --bundle model/
    """


# --- trends ---
@main.command()
@click.option(
    "--db",
    required=True,
    type=click.Path(dir_okay=False),
    help="DuckDB file with the source and scores.",
)
@click.option("--source", required=True, help="Table (or view) holding the scored rows.")
@click.option("--id-col", required=True, help="Id column of the source (matches scores.id).")
@click.option("--time-col", required=True, help="DATE or TIMESTAMP column to bucket by.")
@click.option("--by", default="", help="Comma-separated group columns, e.g. brand,region.")
@click.option(
    "--grain", type=click.Choice(["day", "week", "month"]), default="week", show_default=True
)
@click.option(
    "--window",
    type=click.IntRange(min=2),
    default=4,
    show_default=True,
    help="Buckets in the rolling/trailing window.",
)
@click.option("--positive", help="Label counted as positive (default: positive or bullish).")
@click.option("--negative", help="Label counted as negative (default: negative or bearish).")
@click.option("--scores-table", default="scores", show_default=True)
@click.option("--trend-table", help="Name of the trend table (default trend_<source>_<grain>).")
@click.option(
    "--z-threshold", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True
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
def trends(
    db,
    source,
    id_col,
    time_col,
    by,
    grain,
    window,
    positive,
    negative,
    scores_table,
    trend_table,
    z_threshold,
    csv_path,
    parquet,
    plot,
):
    """Build SQL-queryable sentiment trends (volume, index, shifts, forecast) from scores.

    Example: marketpulse trends --db market.duckdb --source posts --id-col id --time-col posted_at --by brand --plot trends.png
    """
    from pathlib import Path

    from marketpulse.runtime.trends import TrendsConfig, format_report, run

    cfg = TrendsConfig(
        db=Path(db),
        source=source,
        id_col=id_col,
        time_col=time_col,
        by=tuple(c.strip() for c in by.split(",") if c.strip()),
        grain=grain,
        window=window,
        positive=positive,
        negative=negative,
        scores_table=scores_table,
        z_threshold=z_threshold,
        trend_table=trend_table,
        csv=csv_path and Path(csv_path),
        parquet=parquet and Path(parquet),
        plot=plot and Path(plot),
    )
    result = run(cfg)
    click.echo(format_report(result))
    for kind, path in result.outputs.items():
        click.echo(f"wrote {kind}: {path}")
