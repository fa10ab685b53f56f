"""The commands that read what score wrote: `sql` (queries that wait out a scoring
run's commits; read-only unless --write) and `trends` (volume, sentiment index, shifts
and forecasts)."""

from __future__ import annotations

import click


@click.command("sql")
@click.argument("query")
@click.option(
    "--db",
    required=True,
    type=click.Path(dir_okay=False),
    help="DuckDB file, opened read-only (read-write with --write).",
)
@click.option(
    "--write",
    is_flag=True,
    help="Open --db read-write, to run statements that change it (CREATE VIEW, ...), all in "
    "one transaction: committed together, or none if any fails (so leave out BEGIN and "
    "COMMIT). Waits, like any writer, while another process holds the file.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the rows as a JSON list of objects (strict JSON: NaN and infinities null, "
    "lists and structs nested, dates ISO 8601, BLOBs hex).",
)
@click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="Print the rows as CSV with a header (lists and structs as JSON, BLOBs hex).",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=60,
    show_default=True,
    help="Seconds to keep retrying the open while a scoring run commits (with --write: "
    "while any other process has the file open).",
)
def sql_(query, db, write, as_json, as_csv, lock_timeout):
    """Run SQL (one or more statements) on a DuckDB file, read-only unless --write,
    waiting out a scoring run's commits. Every statement that returns rows prints its
    table, in order; --json and --csv print one result set.

    Example: marketpulse sql "SELECT label, count(*) FROM scores GROUP BY label" --db market.duckdb --csv
    """
    from pathlib import Path

    from marketpulse.query import format_results, run_queries

    if as_json and as_csv:
        raise click.UsageError("pass at most one of --json and --csv")
    style = "json" if as_json else "csv" if as_csv else "table"
    one_result = None if style == "table" else f"--{style}"
    results = run_queries(Path(db), query, lock_timeout, one_result=one_result, write=write)
    click.echo(format_results(results, style))


@click.command()
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
    help="Name of the trend table (ASCII letters, digits and _; default "
    "trend_<source>_<grain>, <source> being schema_table outside main); its forecast, "
    "backtest and drivers tables are named after it (forecast_<name without trend_>, ...).",
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
    "--plot",
    type=click.Path(dir_okay=False),
    help="Draw the index per group to this picture, in the format its extension names "
    "(.png, .pdf, .svg, .jpg, ...; none: .png is added).",
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
