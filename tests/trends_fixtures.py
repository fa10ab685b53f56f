"""Scores databases with chosen labels, written by the runtime's own results writer,
for the trends tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pyarrow as pa

from marketpulse.results_schema import MODELS, SCORES, probability_columns
from marketpulse.runtime import results

LABELS = ["negative", "neutral", "positive"]
_ARROW_IDS = {"INTEGER": pa.int32(), "BIGINT": pa.int64()}

# (brand, day of January 2024) -> (positive, neutral, negative) counts.
COUNTS = {
    ("A", 1): (2, 1, 1),
    ("A", 2): (3, 0, 1),
    ("A", 3): (1, 1, 0),
    # A, day 4: no rows at all
    ("A", 5): (2, 1, 1),
    ("A", 6): (3, 1, 0),
    ("A", 7): (2, 2, 0),
    ("A", 8): (0, 1, 3),
    ("B", 1): (1, 0, 1),
    ("B", 2): (1, 0, 1),
    ("B", 3): (1, 0, 1),
    ("B", 4): (1, 0, 1),
    ("B", 5): (2, 0, 1),
    # B, days 6-8: no rows
}


def create_results_tables(con, labels=LABELS, id_type="INTEGER") -> None:
    """The `scores`, `models` and `runs` tables, made by the runtime's own writer."""
    results.prepare(con, SCORES, id_type, labels)


def register_model(con, version: str, registered_at: datetime, labels=LABELS) -> None:
    """Register `version` as the runtime does, at a chosen time (trends order by it)."""
    model = SimpleNamespace(version=version, labels=list(labels), manifest={"labels": labels})
    results.register_model(con, model)
    con.execute(
        f"UPDATE {MODELS} SET registered_at = ? WHERE model_version = ?", [registered_at, version]
    )


def insert_scores(con, version: str, rows: list[tuple], labels=LABELS) -> None:
    """rows: (id, label or None); probabilities put 0.9 on the label. Written in one chunk
    through the runtime's `write_chunk`, under a run row as a scoring run would."""
    id_type = con.execute(
        f"SELECT data_type FROM information_schema.columns WHERE table_name = '{SCORES}' AND column_name = 'id'"
    ).fetchone()[0]
    run_id = f"fixture-{version}-{len(rows)}"
    results.start_run(
        con,
        {
            "run_id": run_id,
            "model_version": version,
            "status": "running",
            "rows_scored": 0,
            "rows_skipped": 0,
            "rows_failed": 0,
            "rows_truncated": 0,
        },
    )
    ids = [r[0] for r in rows]
    columns = {
        "id": pa.array(ids, pa.int64()).cast(_ARROW_IDS[id_type]),
        "model_version": pa.array([version] * len(rows), pa.string()),
        "label": pa.array([label for _, label in rows], pa.string()),
        "confidence": pa.array([0.9 if label else None for _, label in rows], pa.float64()),
        "reason": pa.array([None if label else "empty_text" for _, label in rows], pa.string()),
        "truncated": pa.array([False] * len(rows)),
        "scored_at": pa.array([datetime(2024, 2, 1)] * len(rows), pa.timestamp("us")),
    }
    for lab, col in zip(labels, probability_columns(labels), strict=True):
        columns[col] = pa.array(
            [
                (0.9 if lab == label else 0.1 / (len(labels) - 1)) if label else None
                for _, label in rows
            ],
            pa.float64(),
        )
    scored = sum(1 for _, label in rows if label)
    counts = {"scored": scored, "skipped": len(rows) - scored, "failed": 0, "truncated": 0}
    results.write_chunk(con, SCORES, pa.table(columns), run_id, counts)
    results.finish_run(con, run_id, "completed", 0.0)


def build_db(path: Path, counts=COUNTS) -> Path:
    """posts(id, brand, posted_at, text) + scores/models for one model version `v1`."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id INTEGER, brand VARCHAR, posted_at TIMESTAMP, text VARCHAR)")
    create_results_tables(con)
    register_model(con, "v1", datetime(2024, 1, 31))
    posts, scores = [], []
    next_id = 1
    for (brand, day), (pos, neu, neg) in sorted(counts.items()):
        for label, n in (("positive", pos), ("neutral", neu), ("negative", neg)):
            for k in range(n):
                at = datetime(2024, 1, day, 9) + timedelta(minutes=k)
                posts.append([next_id, brand, at, f"{label} post {next_id}"])
                scores.append((next_id, label))
                next_id += 1
    con.executemany("INSERT INTO posts VALUES (?, ?, ?, ?)", posts)
    insert_scores(con, "v1", scores)
    con.close()
    return path


def build_weekly_db(path: Path, weeks: int = 8) -> Path:
    """Two brands x `weeks` weeks from Monday 2024-01-01, 20 posts a week; brand A drops in
    week 6."""
    counts = {}
    for week in range(weeks):
        counts[("A", week)] = (3, 5, 12) if week == 5 else (10, 5, 5)
        counts[("B", week)] = (8 + week % 2, 6, 6 - week % 2)
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id BIGINT, brand VARCHAR, posted_at TIMESTAMP, text VARCHAR)")
    create_results_tables(con, id_type="BIGINT")
    register_model(con, "v1", datetime(2024, 3, 1))
    posts, scores = [], []
    for (brand, week), (pos, neu, neg) in sorted(counts.items()):
        labels = ["positive"] * pos + ["neutral"] * neu + ["negative"] * neg
        for k, label in enumerate(labels):
            id_ = len(posts) + 1
            at = datetime(2024, 1, 1) + timedelta(weeks=week, hours=8 * k)
            posts.append([id_, brand, at, f"{brand} {label} post {id_}"])
            scores.append((id_, label))
    con.executemany("INSERT INTO posts VALUES (?, ?, ?, ?)", posts)
    insert_scores(con, "v1", scores)
    con.close()
    return path


def trends_config(db, **kw):
    """The trends run the tests mostly ask for: posts by brand per day, a 3-bucket window;
    `kw` overrides any of it."""
    from marketpulse.trends import TrendsConfig

    base = dict(
        db=db, source="posts", id_col="id", time_col="posted_at", by=("brand",), grain="day"
    )
    return TrendsConfig(**{**base, "window": 3, **kw})
