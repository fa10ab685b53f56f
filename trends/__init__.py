"""marketpulse trends stage: per-row scores -> per-bucket market signals in DuckDB.

`run(TrendsConfig) -> TrendsResult` reads the results tables the runtime writes (their
schema is `marketpulse.results_schema`; in --db or a --results-db file: inputs.py),
picks the index labels (labels.py) and writes the `latest_<scores>` view and the
`trend_<source>_<grain>` table (queries.py), the forecast and backtest tables
(forecast.py, forecast_tables.py: statsforecast) and, given a text column, the drivers of
each flagged shift (drivers.py). It needs no bundle and no onnxruntime; statsforecast
loads when forecasting, matplotlib when a plot is asked for.
"""

from marketpulse.trends.report import format_report, summary
from marketpulse.trends.stage import TrendsConfig, TrendsResult, run

__all__ = ["TrendsConfig", "TrendsResult", "format_report", "run", "summary"]
