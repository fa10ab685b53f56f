"""`explain_table(ExplainConfig) -> ExplainStats`: per-word weights for table rows, stored.

The rows (`--where`, `--limit`) are read on one read-only session, explained by
`marketpulse.inference.explain` (leave-one-word-out occlusion on the bundle's graph)
and written to the `explanations` table of the same database, one row per word:

    explanations(id, model_version, label, word, position, weight, explained_at)

`label` is the label the weights explain (the predicted one); `position` is the word's
0-based index in the text. Words that are personal data are stored as their placeholder
(`<EMAIL>`, marketpulse.privacy), never as written. A rerun replaces the rows of the ids
it explains for this model version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from marketpulse.bundle import load_bundle
from marketpulse.errors import MarketpulseError
from marketpulse.inference.explain import Explanation, explain
from marketpulse.results_schema import EXPLANATIONS
from marketpulse.runtime.database import Database
from marketpulse.runtime.results import utcnow
from marketpulse.runtime.source import check_source, low_memory
from marketpulse.sql import DEFAULT_STORAGE_VERSION, quote_ident
from marketpulse.text import blank_sql

DEFAULT_LIMIT = 20  # rows explained per call (the CLI's --limit default)


@dataclass(frozen=True)
class ExplainConfig:
    db: Path
    table: str
    id_col: str
    text_col: str
    bundle: Path
    where: str | None = None
    limit: int = DEFAULT_LIMIT
    device: str = "cpu"
    memory_limit: str = "512MB"
    lock_timeout: float = 60.0


@dataclass
class ExplainStats:
    rows: int
    words: int
    model_version: str
    table: str = EXPLANATIONS


def masked_words(e: Explanation) -> list[str]:
    """The explanation's words, each one inside personal data replaced by its placeholder."""
    from marketpulse import privacy

    spans = privacy.find(e.text)
    out = []
    for w in e.words:
        span = privacy.masked_span(spans, w.start, w.end)
        out.append(w.text if span is None else span.placeholder)
    return out


def explain_table(cfg: ExplainConfig, on_row=None) -> ExplainStats:
    """Explain up to `cfg.limit` rows; `on_row(id, explanation, words)` sees each one."""
    from marketpulse import privacy
    from marketpulse.inference.predictor import Predictor

    if cfg.limit < 1:
        raise MarketpulseError(f"--limit must be at least 1, got {cfg.limit}")
    privacy.find("")  # the masking extra is missing: say so before any inference runs
    bundle = load_bundle(Path(cfg.bundle))
    db = Database(Path(cfg.db), None, cfg.memory_limit, cfg.lock_timeout, DEFAULT_STORAGE_VERSION)
    db.prepare()
    with db.read() as con, low_memory(con, cfg.memory_limit):
        source = check_source(con, cfg.table, cfg.id_col, cfg.text_col, cfg.where, False)
        rows = con.execute(
            f"SELECT s.{quote_ident(source.id_col)}, s.{quote_ident(source.text_col)} "
            f"FROM {source.table_sql} AS s WHERE {source.where_sql} "
            f"AND NOT {blank_sql('s.' + quote_ident(source.text_col))} "
            f"ORDER BY s.{quote_ident(source.id_col)} LIMIT ?",
            [*source.where_params, int(cfg.limit)],
        ).fetchall()
    predictor = Predictor(bundle, device=cfg.device)
    ids = [r[0] for r in rows]
    explanations = explain(predictor, [r[1] for r in rows])
    records = []
    now = utcnow()
    for row_id, e in zip(ids, explanations, strict=True):
        words = masked_words(e)
        if on_row is not None:
            on_row(row_id, e, words)
        records += [
            (row_id, bundle.version, e.label, word, w.position, w.weight, now)
            for word, w in zip(words, e.words, strict=True)
        ]
    with db.write() as con:
        table = quote_ident(EXPLANATIONS)
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id {source.id_type} NOT NULL, "
            "model_version VARCHAR NOT NULL, label VARCHAR, word VARCHAR, position INTEGER, "
            "weight DOUBLE, explained_at TIMESTAMP)"
        )
        con.execute("BEGIN TRANSACTION")
        if ids:
            con.execute(
                f"DELETE FROM {table} WHERE model_version = ? AND id IN (SELECT unnest(?))",
                [bundle.version, ids],
            )
        if records:
            con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)", records)
        con.execute("COMMIT")
    return ExplainStats(rows=len(ids), words=len(records), model_version=bundle.version)
