"""marketpulse trends stage: per-row scores -> per-bucket market signals in DuckDB.

`run(TrendsConfig) -> TrendsResult` reads the results tables the runtime writes (their
schema is `marketpulse.results_schema`) and writes the `latest_<scores>` view and the
`trend_<source>_<grain>` table. It needs duckdb only: no bundle, no onnxruntime;
matplotlib loads when a plot is asked for.
"""

from marketpulse.trends.stage import TrendsConfig, TrendsResult, format_report, run, summary

__all__ = ["TrendsConfig", "TrendsResult", "format_report", "run", "summary"]
