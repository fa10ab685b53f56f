"""Hand-made scores databases in the runtime's results schema, for the trends tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb

LABELS = ["negative", "neutral", "positive"]

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
    """The `scores` and `models` tables exactly as the runtime writes them."""
    probs = ", ".join(f"p_{lab} DOUBLE" for lab in labels)
    con.execute(
        f"""
        CREATE TABLE scores (
            id {id_type}, model_version VARCHAR, label VARCHAR, confidence DOUBLE, {probs},
            reason VARCHAR, truncated BOOLEAN, scored_at TIMESTAMP,
            PRIMARY KEY (id, model_version))
        """
    )
    con.execute(
        "CREATE TABLE models (model_version VARCHAR PRIMARY KEY, labels VARCHAR[], "
        "manifest VARCHAR, registered_at TIMESTAMP)"
    )


def register_model(con, version: str, registered_at: datetime, labels=LABELS) -> None:
    con.execute("INSERT INTO models VALUES (?, ?, '{}', ?)", [version, labels, registered_at])


def insert_scores(con, version: str, rows: list[tuple], labels=LABELS) -> None:
    """rows: (id, label or None); probabilities put 0.9 on the label."""
    out = []
    for id_, label in rows:
        probs = [0.9 if lab == label else 0.1 / (len(labels) - 1) for lab in labels]
        reason = None if label else "empty_text"
        conf = 0.9 if label else None
        out.append([id_, version, label, conf, *probs, reason, False, datetime(2024, 2, 1)])
    marks = ", ".join("?" * (len(labels) + 7))
    con.executemany(f"INSERT INTO scores VALUES ({marks})", out)


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


def build_weekly_db(path: Path) -> Path:
    """Two brands x 8 weeks from Monday 2024-01-01, 20 posts a week; brand A drops in week 6."""
    counts = {}
    for week in range(8):
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
