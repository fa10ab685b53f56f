"""SQL that turns scores into trends; every statement here runs inside DuckDB.

Two objects are built, both queryable from any SQL client:

- `latest_<scores>` (a VIEW): one row per id, the score of the newest model version
  that scored it (newest by `models.registered_at`), so a re-score never double counts.
- `trend_<source>_<grain>` (a TABLE, rebuilt on each run): one row per group x time
  bucket, every bucket from the first to the last one present, empty ones included.

This module only builds SQL text. Identifiers pass through `marketpulse.sql`; label
values travel as bound parameters.
"""

from __future__ import annotations

from marketpulse.results_schema import MODELS, sanitize
from marketpulse.sql import quote_ident, quote_table

GRAINS = ("day", "week", "month")

# Columns the trend table adds; a --by column with one of these names would collide.
TREND_COLUMNS = (
    "bucket",
    "volume",
    "net_index",
    "index_rolling",
    "index_change",
    "trailing_mean",
    "z_score",
    "is_shift",
    "forecast_next",
    "forecast_low",
    "forecast_high",
)

# Half-width of the forecast interval in residual standard errors (~95% if residuals are normal).
INTERVAL_Z = 1.96


def latest_view_name(scores_table: str) -> str:
    return "latest_" + sanitize(scores_table.split(".")[-1])


def trend_table_name(source: str, grain: str) -> str:
    return f"trend_{sanitize(source.split('.')[-1])}_{grain}"


def latest_scores_sql(view: str, scores_table: str, models_table: str = MODELS) -> str:
    """The newest model version's score per id; ties broken by scored_at, then version."""
    return f"""
CREATE OR REPLACE VIEW {quote_ident(view)} AS
SELECT s.*, m.registered_at AS model_registered_at
FROM {quote_table(scores_table)} AS s
LEFT JOIN {quote_table(models_table)} AS m ON m.model_version = s.model_version
QUALIFY row_number() OVER (
    PARTITION BY s.id
    ORDER BY m.registered_at DESC NULLS LAST, s.scored_at DESC NULLS LAST, s.model_version DESC
) = 1
"""


def _clamp(expr: str) -> str:
    # least/greatest skip NULLs in DuckDB, so guard: a missing forecast must stay NULL
    return f"CASE WHEN ({expr}) IS NOT NULL THEN least(greatest({expr}, -1), 1) END"


def trend_table_sql(
    *,
    table: str,
    view: str,
    source: str,
    id_col: str,
    time_col: str,
    by: tuple[str, ...],
    grain: str,
    window: int,
    labels: list[str],
    z_threshold: float,
) -> str:
    """CREATE OR REPLACE TABLE for the trend of `source` joined with the latest scores.

    Parameters, in order: one label per `labels` entry (the n_<label> counts), then the
    positive label and the negative label.
    """
    if grain not in GRAINS:
        raise ValueError(f"grain must be one of {GRAINS}")
    step = f"INTERVAL 1 {grain.upper()}"
    groups = [quote_ident(c) for c in by]
    g_sel = "".join(f"src.{g} AS {g}, " for g in groups)
    g_list = "".join(f"{g}, " for g in groups)
    g_grid = "".join(f"grid.{g}, " for g in groups)
    g_join = "".join(f" AND c.{g} IS NOT DISTINCT FROM grid.{g}" for g in groups)
    part = f"PARTITION BY {', '.join(groups)} " if groups else ""
    counts = "".join(
        f"count(*) FILTER (WHERE label = ?) AS {quote_ident('n_' + sanitize(lab))}, "
        for lab in labels
    )
    filled_counts = "".join(
        f"coalesce(c.{n}, 0) AS {n}, "
        for n in (quote_ident("n_" + sanitize(lab)) for lab in labels)
    )
    shares = "".join(
        f"{quote_ident('n_' + sanitize(lab))} / nullif(volume, 0) "
        f"AS {quote_ident('share_' + sanitize(lab))}, "
        for lab in labels
    )
    min_history = min(3, window)
    w_roll = f"({part}ORDER BY bucket ROWS BETWEEN {window - 1} PRECEDING AND CURRENT ROW)"
    w_trail = f"({part}ORDER BY bucket ROWS BETWEEN {window} PRECEDING AND 1 PRECEDING)"
    w_prev = f"({part}ORDER BY bucket)"
    return f"""
CREATE OR REPLACE TABLE {quote_ident(table)} AS
WITH joined AS (
    SELECT {g_sel}
           CAST(date_trunc('{grain}', CAST(src.{quote_ident(time_col)} AS TIMESTAMP)) AS DATE)
               AS bucket,
           ls.label
    FROM {quote_table(source)} AS src
    JOIN {quote_ident(view)} AS ls ON ls.id = src.{quote_ident(id_col)}
    WHERE ls.label IS NOT NULL AND src.{quote_ident(time_col)} IS NOT NULL
),
counts AS (
    SELECT {g_list}bucket, count(*) AS volume, {counts}
           count(*) FILTER (WHERE label = ?) AS _pos,
           count(*) FILTER (WHERE label = ?) AS _neg
    FROM joined
    GROUP BY ALL
),
buckets AS (
    SELECT CAST(unnest(range(CAST(min(bucket) AS TIMESTAMP),
                             CAST(max(bucket) AS TIMESTAMP) + {step}, {step})) AS DATE) AS bucket
    FROM counts
),
grid AS (
    SELECT {g_list}buckets.bucket
    FROM (SELECT DISTINCT {g_list}1 AS _one FROM counts) AS g CROSS JOIN buckets
),
filled AS (
    SELECT {g_grid}grid.bucket,
           coalesce(c.volume, 0) AS volume, {filled_counts}
           coalesce(c._pos, 0) AS _pos, coalesce(c._neg, 0) AS _neg
    FROM grid LEFT JOIN counts AS c ON c.bucket = grid.bucket{g_join}
),
indexed AS (
    SELECT *, {shares}
           row_number() OVER {w_prev} AS _t,
           (_pos - _neg) / nullif(volume, 0) AS net_index,
           -- standard error of this bucket's index: each row scores +1, 0 or -1
           sqrt(((_pos + _neg) / nullif(volume, 0)
                 - ((_pos - _neg) / nullif(volume, 0)) ** 2) / nullif(volume, 0)) AS _se
    FROM filled
),
windowed AS (
    SELECT *,
           avg(net_index) OVER {w_roll} AS index_rolling,
           net_index - lag(net_index) OVER {w_prev} AS index_change,
           avg(net_index) OVER {w_trail} AS trailing_mean,
           stddev_samp(net_index) OVER {w_trail} AS _trail_sd,
           count(net_index) OVER {w_trail} AS _trail_n,
           regr_slope(net_index, _t) OVER {w_roll} AS _slope,
           regr_intercept(net_index, _t) OVER {w_roll} AS _icpt,
           regr_count(net_index, _t) OVER {w_roll} AS _fit_n,
           regr_syy(net_index, _t) OVER {w_roll} AS _syy,
           regr_sxy(net_index, _t) OVER {w_roll} AS _sxy,
           regr_sxx(net_index, _t) OVER {w_roll} AS _sxx
    FROM indexed
),
scored AS (
    SELECT *,
           CASE WHEN _trail_n >= {min_history} THEN
               (net_index - trailing_mean) / nullif(greatest(_trail_sd, _se), 0)
           END AS z_score,
           CASE WHEN _fit_n >= 2 THEN _icpt + _slope * (_t + 1) END AS _fc,
           CASE WHEN _fit_n >= 3 THEN
               {INTERVAL_Z} * sqrt(greatest(_syy - _sxy * _sxy / _sxx, 0) / (_fit_n - 2))
           END AS _half
    FROM windowed
)
SELECT {g_list}bucket, volume, {", ".join(quote_ident("n_" + sanitize(lab)) for lab in labels)},
       {", ".join(quote_ident("share_" + sanitize(lab)) for lab in labels)},
       net_index, index_rolling, index_change, trailing_mean, z_score,
       coalesce(abs(z_score) >= {float(z_threshold)!r}, false) AS is_shift,
       {_clamp("_fc")} AS forecast_next,
       {_clamp("_fc - _half")} AS forecast_low,
       {_clamp("_fc + _half")} AS forecast_high
FROM scored
ORDER BY {g_list}bucket
"""
