"""Trends: turn per-row scores into per-bucket market signals that SQL clients can query.

`run(TrendsConfig)` reads the results tables the scorer writes (`scores`, `models`),
creates or refreshes the `latest_<scores>` view and the `trend_<source>_<grain>` table
(see `queries.py`), and returns a `TrendsResult` with the latest bucket per group and
the flagged shifts. It needs duckdb and pyarrow only; matplotlib is imported by
`plot.py` when a picture is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from marketpulse.errors import MarketpulseError
from marketpulse.results_schema import MODELS, SCORES, sanitize
from marketpulse.sql import quote_ident, quote_table, require_columns, table_columns
from marketpulse.trends import queries

POSITIVE_DEFAULTS = ("positive", "bullish")
NEGATIVE_DEFAULTS = ("negative", "bearish")
TIME_TYPES = ("DATE", "TIMESTAMP", "VARCHAR")


@dataclass(frozen=True)
class TrendsConfig:
    db: Path
    source: str
    id_col: str
    time_col: str
    by: tuple[str, ...] = ()
    grain: str = "week"
    window: int = 4
    positive: str | None = None
    negative: str | None = None
    scores_table: str = SCORES
    z_threshold: float = 2.0
    trend_table: str | None = None  # default trend_<source>_<grain>
    csv: Path | None = None
    parquet: Path | None = None
    plot: Path | None = None


@dataclass(frozen=True)
class TrendsResult:
    db: Path
    trend_table: str
    latest_view: str
    by: tuple[str, ...]
    grain: str
    labels: list[str]
    positive: str
    negative: str
    z_threshold: float
    n_rows: int
    n_buckets: int
    latest: list[dict[str, Any]] = field(repr=False)
    flagged: list[dict[str, Any]] = field(repr=False)
    outputs: dict[str, Path] = field(default_factory=dict)


def run(cfg: TrendsConfig) -> TrendsResult:
    """Build the latest-scores view and the trend table, then export and plot if asked."""
    _check_config(cfg)
    if not Path(cfg.db).is_file():
        raise MarketpulseError(f"database {cfg.db} not found; pass --db with an existing file")
    try:
        con = duckdb.connect(str(cfg.db))
    except duckdb.IOException as exc:
        raise MarketpulseError(
            f"cannot open {cfg.db} ({str(exc).splitlines()[0]}); if a scoring job holds it, "
            "run trends after it finishes"
        ) from exc
    try:
        _check_source(con, cfg)
        view = queries.latest_view_name(cfg.scores_table)
        con.execute(queries.latest_scores_sql(view, cfg.scores_table))
        labels = _model_labels(con, cfg, view)
        positive = _pick_label(cfg.positive, POSITIVE_DEFAULTS, labels, "--positive")
        negative = _pick_label(cfg.negative, NEGATIVE_DEFAULTS, labels, "--negative")
        if positive == negative:
            raise MarketpulseError(
                f"--positive and --negative are both {positive!r}; pass two different labels"
            )
        _check_collisions(cfg.by, labels)
        table = cfg.trend_table or queries.trend_table_name(cfg.source, cfg.grain)
        sql = queries.trend_table_sql(
            table=table,
            view=view,
            source=cfg.source,
            id_col=cfg.id_col,
            time_col=cfg.time_col,
            by=cfg.by,
            grain=cfg.grain,
            window=cfg.window,
            labels=labels,
            z_threshold=cfg.z_threshold,
        )
        try:
            con.execute(sql, [*labels, positive, negative])
        except duckdb.ConversionException as exc:
            raise MarketpulseError(
                f"column {cfg.time_col!r} holds values that are not dates or timestamps "
                f"({str(exc).splitlines()[0]}); pass --time-col with a DATE or TIMESTAMP column"
            ) from exc
        result = _collect(con, cfg, table, view, labels, positive, negative)
        outputs = _export(con, table, cfg)
    finally:
        con.close()
    if cfg.plot:
        from marketpulse.trends.plot import plot_trends

        outputs["plot"] = plot_trends(result, cfg.plot, _all_rows(cfg.db, table))
    return TrendsResult(**{**result.__dict__, "outputs": outputs})


def _check_config(cfg: TrendsConfig) -> None:
    if cfg.grain not in queries.GRAINS:
        raise MarketpulseError(
            f"grain {cfg.grain!r} is not supported; pass --grain {'|'.join(queries.GRAINS)}"
        )
    if cfg.window < 2:
        raise MarketpulseError(f"window {cfg.window} is too short; pass --window 2 or more")
    if not cfg.z_threshold > 0:
        raise MarketpulseError(f"z threshold {cfg.z_threshold} must be positive; pass e.g. 2.0")
    if cfg.trend_table is not None:
        quote_table(cfg.trend_table)  # validates the name
    for path in (cfg.csv, cfg.parquet, cfg.plot):
        if path is not None and not Path(path).parent.exists():
            raise MarketpulseError(
                f"folder {Path(path).parent} does not exist; create it or pass another path"
            )


def _check_source(con, cfg: TrendsConfig) -> None:
    cols = {"--id-col": cfg.id_col, "--time-col": cfg.time_col}
    have = require_columns(con, cfg.source, cols)
    for col in cfg.by:
        require_columns(con, cfg.source, {"--by": col})
    time_type = have[cfg.time_col].upper()
    if not time_type.startswith(TIME_TYPES):
        raise MarketpulseError(
            f"column {cfg.time_col!r} is {have[cfg.time_col]}, not a date or timestamp; "
            "pass --time-col with a DATE or TIMESTAMP column"
        )
    for table, hint in ((cfg.scores_table, "--scores-table"), (MODELS, None)):
        try:
            table_columns(con, table)
        except MarketpulseError as exc:
            fix = f"pass {hint} or " if hint else ""
            raise MarketpulseError(
                f"table {table!r} not found in {cfg.db}; {fix}score the source first with "
                f"`marketpulse score --db {cfg.db} --table {cfg.source} ...`"
            ) from exc
    s_type = table_columns(con, cfg.scores_table).get("id")
    if s_type is None:
        raise MarketpulseError(
            f"table {cfg.scores_table!r} has no id column, so it is not a marketpulse scores "
            "table; pass --scores-table with the table `marketpulse score` wrote"
        )


def _model_labels(con, cfg: TrendsConfig, view: str) -> list[str]:
    """Labels of the model versions behind the latest scores of this source, in model order."""
    rows = con.execute(
        f"""
        SELECT ls.model_version, any_value(m.labels), count(*)
        FROM {quote_table(cfg.source)} AS src
        JOIN {quote_ident(view)} AS ls ON ls.id = src.{quote_ident(cfg.id_col)}
        LEFT JOIN {quote_ident(MODELS)} AS m ON m.model_version = ls.model_version
        GROUP BY ls.model_version
        ORDER BY max(m.registered_at) DESC NULLS LAST
        """
    ).fetchall()
    if not rows:
        raise MarketpulseError(
            f"no row of {cfg.source!r} has a score in {cfg.scores_table!r}; score it first "
            f"with `marketpulse score --db {cfg.db} --table {cfg.source} ...` or check --id-col"
        )
    labels: list[str] = []
    for version, model_labels, _ in rows:
        if model_labels is None:
            raise MarketpulseError(
                f"model version {version} has scores but no row in the models table; "
                "re-run `marketpulse score` so it registers the model"
            )
        labels += [lab for lab in model_labels if lab not in labels]
    return labels


def _pick_label(given: str | None, defaults: tuple[str, ...], labels: list[str], flag: str) -> str:
    if given is not None:
        if given not in labels:
            raise MarketpulseError(
                f"{flag} {given!r} is not a label of the model (labels: {', '.join(labels)}); "
                f"pass {flag} with one of them"
            )
        return given
    for name in defaults:
        if name in labels:
            return name
    raise MarketpulseError(
        f"the model's labels ({', '.join(labels)}) include none of {', '.join(defaults)}; "
        f"pass {flag} with one of them"
    )


def _check_collisions(by: tuple[str, ...], labels: list[str]) -> None:
    made = {*queries.TREND_COLUMNS, "label"}  # label: the joined score column
    for lab in labels:
        made |= {"n_" + sanitize(lab), "share_" + sanitize(lab)}
    for col in by:
        if col in made or col.startswith("_"):
            raise MarketpulseError(
                f"--by column {col!r} clashes with a trend column; rename it in a view "
                "and pass that view as --source"
            )


def _collect(con, cfg, table, view, labels, positive, negative) -> TrendsResult:
    t = quote_ident(table)
    groups = [quote_ident(c) for c in cfg.by]
    part = f"PARTITION BY {', '.join(groups)} " if groups else ""
    n_rows, n_buckets = con.execute(f"SELECT count(*), count(DISTINCT bucket) FROM {t}").fetchone()
    latest = _dicts(
        con.execute(
            f"SELECT * FROM {t} QUALIFY row_number() OVER ({part}ORDER BY bucket DESC) = 1 "
            f"ORDER BY {', '.join(groups) or 'bucket'}"
        )
    )
    flagged = _dicts(
        con.execute(
            f"SELECT * FROM {t} WHERE is_shift ORDER BY bucket{''.join(', ' + g for g in groups)}"
        )
    )
    return TrendsResult(
        db=Path(cfg.db),
        trend_table=table,
        latest_view=view,
        by=tuple(cfg.by),
        grain=cfg.grain,
        labels=labels,
        positive=positive,
        negative=negative,
        z_threshold=cfg.z_threshold,
        n_rows=n_rows,
        n_buckets=n_buckets,
        latest=latest,
        flagged=flagged,
    )


def _dicts(cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _all_rows(db: Path, table: str) -> list[dict[str, Any]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return _dicts(con.execute(f"SELECT * FROM {quote_ident(table)}"))
    finally:
        con.close()


def _export(con, table: str, cfg: TrendsConfig) -> dict[str, Path]:
    outputs: dict[str, Path] = {}
    if not (cfg.csv or cfg.parquet):
        return outputs
    arrow = con.sql(f"SELECT * FROM {quote_ident(table)}").to_arrow_table()
    if cfg.csv:
        import pyarrow.csv as pacsv

        pacsv.write_csv(arrow, str(cfg.csv))
        outputs["csv"] = Path(cfg.csv)
    if cfg.parquet:
        import pyarrow.parquet as pq

        pq.write_table(arrow, str(cfg.parquet))
        outputs["parquet"] = Path(cfg.parquet)
    return outputs


def summary(result: TrendsResult) -> dict[str, Any]:
    """JSON-ready summary for jobs (`marketpulse trends --json`)."""

    def plain(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}

    return {
        "db": str(result.db),
        "trend_table": result.trend_table,
        "latest_view": result.latest_view,
        "grain": result.grain,
        "positive": result.positive,
        "negative": result.negative,
        "rows": result.n_rows,
        "buckets": result.n_buckets,
        "latest": [plain(r) for r in result.latest],
        "flagged": [plain(r) for r in result.flagged],
        "outputs": {k: str(v) for k, v in result.outputs.items()},
    }


def format_report(result: TrendsResult, max_flagged: int = 20) -> str:
    """A readable summary: the latest bucket of each group, then the flagged shifts."""
    lines = [
        f"{result.trend_table}: {result.n_rows} rows ({result.n_buckets} {result.grain} buckets"
        f"{' x ' + str(len(result.latest)) + ' groups' if result.by else ''}), "
        f"index = ({result.positive} - {result.negative}) / volume; "
        f"latest scores per id in view {result.latest_view}",
        "",
        f"Latest {result.grain} per group:",
    ]
    head = [*result.by, "bucket", "volume", "index", "rolling", "change", "z", "next [interval]"]
    rows = [
        [
            *(str(r[c]) for c in result.by),
            str(r["bucket"]),
            str(r["volume"]),
            _num(r["net_index"]),
            _num(r["index_rolling"]),
            _num(r["index_change"], signed=True),
            _num(r["z_score"], signed=True),
            _forecast(r),
        ]
        for r in result.latest
    ]
    lines += _table(head, rows)
    lines.append("")
    flagged = result.flagged
    if not flagged:
        lines.append(f"No shifts flagged (|z| >= {result.z_threshold:g}).")
        return "\n".join(lines)
    lines.append(f"Flagged shifts (|z| >= {result.z_threshold:g}): {len(flagged)}")
    head = [*result.by, "bucket", "volume", "index", "trailing mean", "z"]
    rows = [
        [
            *(str(r[c]) for c in result.by),
            str(r["bucket"]),
            str(r["volume"]),
            _num(r["net_index"]),
            _num(r["trailing_mean"]),
            _num(r["z_score"], signed=True),
        ]
        for r in flagged[-max_flagged:]
    ]
    lines += _table(head, rows)
    if len(flagged) > max_flagged:
        lines.append(
            f"... {len(flagged) - max_flagged} earlier ones: "
            f"SELECT * FROM {result.trend_table} WHERE is_shift"
        )
    return "\n".join(lines)


def _num(value, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _forecast(row) -> str:
    if row["forecast_next"] is None:
        return "-"
    if row["forecast_low"] is None:
        return _num(row["forecast_next"])
    return f"{row['forecast_next']:.3f} [{row['forecast_low']:.2f}, {row['forecast_high']:.2f}]"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r) for r in rows
    ]
