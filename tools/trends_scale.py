"""How long does `marketpulse trends` take on a large scored table?

    python -m marketpulse.tools.trends_scale [--groups 100] [--weeks 133] [--rows 1000000]

Builds a DuckDB file with `--rows` posts over `--groups` brands and `--weeks` weeks
(texts drawn from a small vocabulary, labels drawn per brand with a few planted shifts),
writes their scores through the runtime's own results writer, then times
`marketpulse.trends.run` as a user runs it: the trend table, forecasts (statsforecast
backtests for every brand), the PNG, and the drivers of the flagged shifts. Prints the
seconds of each configuration.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click

from marketpulse import cpu

WORDS = (
    "shares stock price earnings guidance outlook recall lawsuit dividend upgrade downgrade "
    "launch delay outage strike merger deal record growth loss profit margin demand supply "
    "tariff rates inflation buyback forecast quarter customers service battery shipping"
).split()


def build(db: Path, groups: int, weeks: int, rows: int, seed: int = 0) -> None:
    import duckdb

    from marketpulse.runtime import results

    con = duckdb.connect(str(db))
    words = ", ".join(f"'{w}'" for w in WORDS)
    con.execute(f"SELECT setseed({seed / 10})")
    con.execute(
        f"""
        CREATE TABLE posts AS
        SELECT i AS id,
               'brand' || lpad(CAST(i % {groups} AS VARCHAR), 3, '0') AS brand,
               TIMESTAMP '2024-01-01' + to_seconds(CAST(floor(random() * {weeks} * 604800) AS BIGINT))
                   AS posted_at,
               array_to_string([[{words}][1 + CAST(floor(random() * {len(WORDS)}) AS INTEGER)]
                                for _ in range(8)], ' ') AS text
        FROM range({rows}) AS t(i)
        """
    )
    labels = ["negative", "neutral", "positive"]
    results.prepare(con, "scores", "BIGINT", labels)
    model = SimpleNamespace(version="v1", labels=labels, manifest={"labels": labels})
    results.register_model(con, model)
    # a few planted negative weeks, the rest a per-brand mix
    con.execute(
        """
        INSERT INTO scores BY NAME
        SELECT id, 'v1' AS model_version,
               CASE WHEN u < p_neg THEN 'negative' WHEN u < 0.7 THEN 'neutral' ELSE 'positive' END
                   AS label,
               0.9 AS confidence, NULL AS reason, false AS truncated,
               TIMESTAMP '2024-12-01' AS scored_at
        FROM (
            SELECT id, random() AS u,
                   CASE WHEN hash(brand) % 10 = 0 AND date_trunc('week', posted_at) =
                             TIMESTAMP '2024-06-03' THEN 0.6 ELSE 0.2 END AS p_neg
            FROM posts
        )
        """
    )
    con.close()


@click.command()
@click.option("--groups", default=100, show_default=True)
@click.option("--weeks", default=133, show_default=True)
@click.option("--rows", default=1_000_000, show_default=True)
def main(groups: int, weeks: int, rows: int) -> None:
    """Time `marketpulse trends` on a large scored table.

    Example: python -m marketpulse.tools.trends_scale --rows 1000000
    """
    from marketpulse.trends import TrendsConfig, run

    with tempfile.TemporaryDirectory(prefix="marketpulse-trends-scale-") as tmp:
        db = Path(tmp) / "market.duckdb"
        start = time.perf_counter()
        build(db, groups, weeks, rows)
        click.echo(f"built {rows:,} scored rows in {time.perf_counter() - start:.1f}s")
        click.echo(f"machine: {cpu.describe()}")
        base = {"db": db, "source": "posts", "id_col": "id", "time_col": "posted_at"}
        for name, extra in (
            ("trend table only (--horizon 0)", {"horizon": 0}),
            ("+ forecasts (default)", {}),
            ("+ forecasts + PNG + drivers", {"plot": Path(tmp) / "t.png", "text_col": "text"}),
        ):
            cfg = TrendsConfig(**base, by=("brand",), **extra)
            start = time.perf_counter()
            result = run(cfg)
            click.echo(
                f"{name}: {time.perf_counter() - start:.1f}s "
                f"({result.n_rows:,} trend rows, {len(result.flagged)} flagged)"
            )


if __name__ == "__main__":
    main()
