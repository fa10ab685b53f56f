"""The results tables: what the runtime writes and trends (and any SQL client) reads.

    <scores>(id <source id type>, model_version, label, confidence, p_<label>..., reason,
             truncated, scored_at, run_id)     -- default name `scores` (--results-table)
    models(model_version, labels VARCHAR[], manifest VARCHAR (JSON), registered_at)
    runs(run_id, model_version, source, rows_scored, ... status, engine, error,
         psi_label, psi_confidence, unknown_heavy_share, drift_note, rows_duplicate,
         variant_reason, canary_rows, canary_disagree_share, canary_note, results_db,
         rows_rescored, rescore_margin, drift_warn)
    explanations(id VARCHAR, model_version, label, word, position, weight, explained_at,
                 source, variant, source_db)   -- one row per word weighed, by `explain`

A results table holds the scores of one source table of one database file: `runs.source`
and `runs.source_db` (the source file's resolved path; it equals `runs.results_db` when
the results went into the source file itself) say which. `explanations.id` is the source
id cast to VARCHAR (`CAST(id AS VARCHAR)`), so tables with any id type share it;
`explanations.source` names the table as `runs.source` does (NULL in rows from before
it was recorded). The names in RESERVED_TABLES are marketpulse's own tables and are
never a `--results-table`.

`run_id` joins a row to the run that scored it, so `runs.variant` says which graph
(fp32 or int8: `--variant auto` picks per machine) produced it; NULL in rows written
before it was recorded. `label` is NULL exactly when `reason` says why the row was not scored ('null_text' or
'empty_text'). A label's probability column is `probability_column(label)`. The runtime
(`marketpulse.runtime.results`) creates and writes these tables; trends reads them.
"""

from __future__ import annotations

import re

from marketpulse.errors import MarketpulseError

SCORES = "scores"
RUNS = "runs"
MODELS = "models"
SCORE_COLUMNS = ("id", "model_version", "label", "confidence", "reason", "truncated", "scored_at")
REASONS = ("null_text", "empty_text")
RUN_STATUSES = ("running", "completed", "failed", "interrupted")
RUN_COLUMNS = {
    "run_id": "VARCHAR PRIMARY KEY",
    "model_version": "VARCHAR",
    "source": "VARCHAR",
    "rows_scored": "BIGINT",
    "rows_skipped": "BIGINT",
    "rows_failed": "BIGINT",
    "started_at": "TIMESTAMP",
    "finished_at": "TIMESTAMP",
    "rows_per_s": "DOUBLE",
    "status": "VARCHAR",
    "rows_truncated": "BIGINT",
    "results_table": "VARCHAR",
    "source_db": "VARCHAR",
    "filter": "VARCHAR",
    "row_limit": "BIGINT",
    "provider": "VARCHAR",
    "variant": "VARCHAR",
    "error": "VARCHAR",
    "engine": "VARCHAR",
    # drift against the bundle's reference (marketpulse.drift); NULL when not measured
    "psi_label": "DOUBLE",
    "psi_confidence": "DOUBLE",
    "unknown_heavy_share": "DOUBLE",
    "drift_note": "VARCHAR",
    "drift_warn": "BOOLEAN",  # the run warned of drift; NULL when not measured or in older runs
    # rows scored by copying the result of the same text earlier in their window
    # (counted in rows_scored too); NULL in runs recorded before it was counted
    "rows_duplicate": "BIGINT",
    # why this graph ran ("auto: int8 1.9x fp32 on avx512_vnni, passed gate")
    "variant_reason": "VARCHAR",
    # the canary (runtime/canary.py): a sample of the scored rows rescored by the fp32
    # graph; rows 0 when fp32 ran, NULL when not measured; the note says why
    "canary_rows": "BIGINT",
    "canary_disagree_share": "DOUBLE",
    "canary_note": "VARCHAR",
    # the results file's resolved path; NULL in runs recorded before it was
    "results_db": "VARCHAR",
    # of rows_scored: rows the quantized graph hesitated on (top two probabilities within
    # the bundle's rescore margin), scored by the fp32 graph instead; NULL before counted
    "rows_rescored": "BIGINT",
    # the margin those rows were picked by (score --rescore-margin, else the bundle's; 0:
    # none rescored, as for fp32); NULL in runs recorded before it was
    "rescore_margin": "DOUBLE",
}
# Run columns added after runs tables existed: an older runs table gets them by ALTER.
# scores columns added after the first release: ALTERed into older tables, NULL there
ADDED_SCORE_COLUMNS = {"run_id": "VARCHAR"}  # the run that scored the row (its variant)
ADDED_RUN_COLUMNS = (
    "psi_label",
    "psi_confidence",
    "unknown_heavy_share",
    "drift_note",
    "rows_duplicate",
    "variant_reason",
    "canary_rows",
    "canary_disagree_share",
    "canary_note",
    "results_db",
    "rows_rescored",
    "rescore_margin",
    "drift_warn",
)
EXPLANATIONS = "explanations"
EXPLANATION_COLUMNS = {
    "id": "VARCHAR NOT NULL",  # the source id, CAST(id AS VARCHAR): any id type fits
    "model_version": "VARCHAR NOT NULL",
    "label": "VARCHAR",
    "word": "VARCHAR",
    "position": "INTEGER",
    "weight": "DOUBLE",
    "explained_at": "TIMESTAMP",
    "source": "VARCHAR",  # the source table as given (runs.source); NULL in older rows
    "variant": "VARCHAR",  # the graph explained (fp32, int8); NULL in older rows
    # the source file's resolved path (explanations of several files may share a
    # --results-db); NULL in older rows, which were always in the source file itself
    "source_db": "VARCHAR",
}
# marketpulse's own tables: a scores table under one of these names would take its place
RESERVED_TABLES = (RUNS, MODELS, EXPLANATIONS)
MODEL_COLUMNS = {
    "model_version": "VARCHAR PRIMARY KEY",
    "labels": "VARCHAR[]",
    "manifest": "VARCHAR",
    "registered_at": "TIMESTAMP",
}


def sanitize(name: str) -> str:
    """Lower-case a label or table name into [a-z0-9_], as column and table names use it."""
    return re.sub(r"[^a-z0-9_]", "_", name.lower())


def probability_column(label: str) -> str:
    return "p_" + sanitize(label)


def probability_columns(labels: list[str]) -> list[str]:
    cols = [probability_column(label) for label in labels]
    if len(set(cols)) != len(cols):
        raise MarketpulseError(
            f"labels {labels} collide once sanitized to column names ({cols}); "
            "re-train with distinct label names"
        )
    return cols
