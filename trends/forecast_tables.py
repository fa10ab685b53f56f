"""The DuckDB side of forecasting: read each group's index series from the trend table,
forecast it (`forecast.py`), and write what came out as tables SQL clients can query.

    forecast_<source>_<grain>            the next --horizon buckets per group: <by columns>,
                                         bucket, step, model, forecast, lo_80, hi_80,
                                         lo_95, hi_95
    forecast_backtest_<source>_<grain>   every candidate model and `auto` (the product's
                                         own choice, made online) per group and step:
                                         mae, mase, coverage_80, coverage_95, points,
                                         coverage_points, chosen
    trend table                          gains forecast_next, forecast_low, forecast_high:
                                         at each bucket, the one-step forecast the product
                                         would have made there, with its 95% band (the
                                         latest bucket: the chosen model's forecast)

`write_forecasts` returns the skill summary (`forecast._skill`) with `stale`: the groups
that had no rows in the last --window buckets, whose forecast carries a stale value.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from marketpulse.sql import quote_ident
from marketpulse.trends import forecast
from marketpulse.trends.queries import steps_sql


def write_forecasts(
    con,
    *,
    table: str,
    forecast_table: str,
    backtest_table: str,
    by: tuple[str, ...],
    grain: str,
    window: int,
    horizon: int,
) -> dict:
    """Forecast every group of `table` into `forecast_table` and `backtest_table`; fill
    the trend table's forecast columns; return the skill summary."""
    groups = [quote_ident(c) for c in by]
    t = quote_ident(table)
    match = " AND ".join(f"t.{g} IS NOT DISTINCT FROM k.{g}" for g in groups) or "true"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _trend_groups AS SELECT *, row_number() OVER "
        f"(ORDER BY {', '.join(groups) or '1'}) AS _gid FROM (SELECT DISTINCT "
        f"{', '.join(groups) or '1 AS _one'} FROM {t})"
    )
    rows = con.execute(
        f"SELECT k._gid, t.bucket, t.net_index FROM {t} AS t JOIN _trend_groups AS k ON {match} "
        "ORDER BY k._gid, t.bucket"
    ).fetchall()
    series, buckets = _series(rows)
    result = forecast.forecast_series(series, forecast.SEASONS[grain], window, horizon)

    future = result.future.assign(_gid=result.future["unique_id"].astype(int))
    future = future.drop(columns="unique_id")
    con.register("_future", future)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _last AS SELECT k._gid, max(t.bucket) AS last_bucket "
        f"FROM {t} AS t JOIN _trend_groups AS k ON {match} GROUP BY k._gid"
    )
    k_cols = "".join(f"k.{g}, " for g in groups)
    con.execute(
        f"CREATE OR REPLACE TABLE {quote_ident(forecast_table)} AS SELECT {k_cols}"
        f"CAST(l.last_bucket + {steps_sql(grain, 'CAST(f.step AS INTEGER)')} AS DATE) AS bucket, "
        "CAST(f.step AS INTEGER) AS step, f.model, f.forecast, f.lo_80, f.hi_80, f.lo_95, f.hi_95 "
        "FROM _future AS f JOIN _trend_groups AS k USING (_gid) JOIN _last AS l USING (_gid) "
        f"ORDER BY {k_cols}step"
    )
    con.unregister("_future")

    backtest = result.backtest
    if backtest.empty:
        backtest = pd.DataFrame(
            {c: pd.Series(dtype=d) for c, d in _BACKTEST_TYPES.items()} | {"unique_id": []}
        )
    backtest = backtest.assign(_gid=backtest["unique_id"].astype(int)).drop(columns="unique_id")
    con.register("_backtest", backtest)
    con.execute(
        # CAST: an empty frame's object column would otherwise make a NULL-typed column
        f"CREATE OR REPLACE TABLE {quote_ident(backtest_table)} AS SELECT {k_cols}"
        "CAST(b.model AS VARCHAR) AS model, "
        "CAST(b.step AS INTEGER) AS step, b.mae, b.mase, b.coverage_80, b.coverage_95, "
        "CAST(b.points AS INTEGER) AS points, CAST(b.coverage_points AS INTEGER) AS "
        "coverage_points, b.chosen "
        f"FROM _backtest AS b JOIN _trend_groups AS k USING (_gid) ORDER BY {k_cols}b.model, step"
    )
    con.unregister("_backtest")

    history = _history_rows(result, buckets)
    con.register("_history", history)
    keep = f"t.* EXCLUDE ({', '.join(_FORECAST_COLUMNS)})" if _has_forecast(con, table) else "t.*"
    con.execute(
        f"CREATE OR REPLACE TABLE {t} AS SELECT {keep}, h.forecast_next, h.forecast_low, "
        f"h.forecast_high FROM {t} AS t JOIN _trend_groups AS k ON {match} "
        "LEFT JOIN _history AS h ON h._gid = k._gid AND h.bucket = t.bucket "
        f"ORDER BY {''.join(f't.{g}, ' for g in groups)}t.bucket"
    )
    con.unregister("_history")
    stale = _stale(con, by, series, buckets, window)
    return {**result.skill, "window": window, "stale": stale}


_FORECAST_COLUMNS = ("forecast_next", "forecast_low", "forecast_high")
_BACKTEST_TYPES = {
    "model": "object",
    "step": "int64",
    "mae": "float64",
    "mase": "float64",
    "coverage_80": "float64",
    "coverage_95": "float64",
    "points": "int64",
    "coverage_points": "int64",
    "chosen": "bool",
}


def _has_forecast(con, table: str) -> bool:
    cols = {r[0] for r in con.execute(f"DESCRIBE {quote_ident(table)}").fetchall()}
    return set(_FORECAST_COLUMNS) <= cols


def _series(rows) -> tuple[dict[str, np.ndarray], dict[str, list[date]]]:
    """Per group: its index from its first non-empty bucket on, NaN for an empty bucket.
    Left NaN here so that `forecast` can tell them apart: it carries the last value
    forward as model input, but scores forecasts only on buckets that had rows."""
    values: dict[str, list] = {}
    dates: dict[str, list] = {}
    for gid, bucket, index in rows:
        uid = str(gid)
        if index is None and not values.get(uid):
            continue  # before the group's first row
        values.setdefault(uid, []).append(np.nan if index is None else index)
        dates.setdefault(uid, []).append(bucket)
    series = {uid: np.array(v, dtype=float) for uid, v in values.items()}
    return series, dates


def _stale(con, by, series: dict[str, np.ndarray], buckets, window: int) -> list[dict]:
    """Groups whose last bucket with rows is more than `window` buckets before the latest
    bucket (the grid runs every group to it): their forecast only carries that last value
    forward. JSON-ready: {"group": {by column: value}, "last_bucket", "buckets_since"}."""
    stale = {}
    for uid, y in series.items():
        last = int(np.flatnonzero(~np.isnan(y))[-1])
        if len(y) - 1 - last > window:
            stale[int(uid)] = (buckets[uid][last], len(y) - 1 - last)
    if not stale:
        return []
    cols = ", ".join(quote_ident(c) for c in by)
    keys = {
        gid: values
        for gid, *values in con.execute(
            f"SELECT _gid{', ' + cols if by else ''} FROM _trend_groups"
        ).fetchall()
    }
    return [
        {
            "group": {c: _plain(v) for c, v in zip(by, keys[gid], strict=True)},
            "last_bucket": last.isoformat() if hasattr(last, "isoformat") else str(last),
            "buckets_since": since,
        }
        for gid, (last, since) in sorted(stale.items())
    ]


def _plain(value):
    """A --by value as JSON can hold it."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _history_rows(result, buckets: dict[str, list[date]]) -> pd.DataFrame:
    """forecast_next/low/high per (group, bucket): backtest one-steps, then the future's."""
    frames = []
    h = result.history
    if not h.empty:
        frames.append(
            pd.DataFrame(
                {
                    "_gid": h["unique_id"].astype(int),
                    "bucket": [buckets[u][t] for u, t in zip(h["unique_id"], h["t"], strict=True)],
                    "forecast_next": h["forecast_next"].clip(-1, 1),
                    "forecast_low": h["low"].clip(-1, 1),
                    "forecast_high": h["high"].clip(-1, 1),
                }
            )
        )
    first = result.future[result.future["step"] == 1]
    frames.append(
        pd.DataFrame(
            {
                "_gid": first["unique_id"].astype(int),
                "bucket": [buckets[u][-1] for u in first["unique_id"]],
                "forecast_next": first["forecast"],
                "forecast_low": first["lo_95"],
                "forecast_high": first["hi_95"],
            }
        )
    )
    out = pd.concat(frames, ignore_index=True)
    out["bucket"] = pd.to_datetime(out["bucket"]).dt.date
    return out
