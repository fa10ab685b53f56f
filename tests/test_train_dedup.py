"""Duplicate texts in the labeled rows: each text is trained on or tested on, never both.

`train.dedup.drop_duplicates` keeps a text once (after stripping surrounding whitespace,
case kept); a text with conflicting labels keeps its strict-majority label or is
dropped; `train.trainer.prepare` applies it before the split and records the counts.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import duckdb
import pytest
from click.testing import CliRunner
from conftest import TINY_LABELS, train_args

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.train.config import TrainConfig
from marketpulse.train.data import DataSource, load_labeled
from marketpulse.train.dedup import drop_duplicates

REPEATED = "Apple beats estimates"
# (text, label) rows beside 6 distinct texts per class: one text on three rows that
# agree (two of them differ only in surrounding whitespace), the same words in lower
# case (another text), a strict majority, a tie, and a plurality that is no majority.
DUPLICATED_ROWS = [
    (REPEATED, "bullish"),
    (f"  {REPEATED}", "bullish"),
    (f"{REPEATED}\n", "bullish"),
    (REPEATED.lower(), "bullish"),
    ("Oil slides", "bearish"),
    ("Oil slides", "bearish"),
    ("Oil slides ", "neutral"),
    ("Fed holds rates", "neutral"),
    ("Fed holds rates", "bullish"),
    ("Markets mixed", "bearish"),
    ("Markets mixed", "bearish"),
    ("Markets mixed", "bullish"),
    ("Markets mixed", "neutral"),
]
DISTINCT_ROWS = [(f"{label} post number {n}", label) for label in TINY_LABELS for n in range(6)]


def write_db(path, rows) -> str:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id INTEGER, body VARCHAR, tag VARCHAR)")
    con.executemany(
        "INSERT INTO posts VALUES (?, ?, ?)", [(i, t, y) for i, (t, y) in enumerate(rows)]
    )
    con.close()
    return str(path)


def write_csv(path, rows) -> str:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (text VARCHAR, label VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", rows)
    con.execute(f"COPY t TO '{path}' (HEADER)")
    con.close()
    return str(path)


def config(db: str, out, base, seed: int = 42) -> TrainConfig:
    source = DataSource(db=db, table="posts", text_col="body", label_col="tag")
    return TrainConfig(source=source, out=out, base_model=str(base), device="cpu", seed=seed)


@pytest.fixture
def duplicated_db(tmp_path) -> str:
    return write_db(tmp_path / "dups.duckdb", DISTINCT_ROWS + DUPLICATED_ROWS)


def test_majority_tie_and_whitespace_cases(tmp_path):
    csv = write_csv(tmp_path / "labeled.csv", DISTINCT_ROWS + DUPLICATED_ROWS)
    read = load_labeled(DataSource(input=csv))
    rows = drop_duplicates(read)

    kept = dict(zip(rows.texts, rows.labels, strict=True))
    assert len(rows.texts) == len(kept) == len(DISTINCT_ROWS) + 3
    # kept once, as the first of its rows in canonical order; case is not folded
    assert [t for t in rows.texts if t.strip() == REPEATED] == [f"  {REPEATED}"]
    assert kept[REPEATED.lower()] == "bullish"
    assert kept["Oil slides"] == "bearish"  # 2 of 3 rows: the majority label wins
    assert "Oil slides " not in kept
    assert "Fed holds rates" not in kept  # 1 against 1: dropped
    assert "Markets mixed" not in kept  # 2 of 4 is the most but no majority: dropped
    assert all(kept[t] == y for t, y in DISTINCT_ROWS)

    assert rows.skipped == {
        "null_text": 0,
        "empty_text": 0,
        "null_label": 0,
        "duplicate": 2,  # the repeated text's other two rows
        "conflicting_label": 2 + 2 + 4,  # majority: all but one row; tie, plurality: all
    }
    assert rows.rows_read == len(rows.texts) + sum(rows.skipped.values())
    assert rows.duplicates.record() == {
        "repeated": 1,
        "conflicting": 3,
        "majority_kept": 1,
        "dropped": 2,
    }
    assert rows.duplicates.log_line() == (
        "1 duplicate text kept once (2 rows skipped); 3 texts had conflicting labels "
        "(1 kept with its majority label, 2 dropped; 8 rows skipped)"
    )
    # the fingerprint still names the rows as read, duplicates included
    assert rows.fingerprint() == read.fingerprint()
    assert rows.texts == sorted(rows.texts)  # canonical order kept


def test_a_repeated_text_lands_in_exactly_one_split(duplicated_db, tiny_checkpoint, tmp_path):
    from marketpulse.train.trainer import prepare

    for seed in range(5):
        prepared = prepare(config(duplicated_db, tmp_path / "model", tiny_checkpoint, seed))
        fit = prepared.fit
        parts = {
            "train": fit.train_texts,
            "validation": fit.val_texts,
            "test": prepared.test_texts,
        }
        found = {part: [t for t in texts if t.strip() == REPEATED] for part, texts in parts.items()}
        assert sum(len(hits) for hits in found.values()) == 1, (seed, found)
        stripped = Counter(t.strip() for texts in parts.values() for t in texts)
        assert max(stripped.values()) == 1  # no text twice, in one part or across parts


def test_counts_recorded_in_metrics_json_and_logged(
    duplicated_db, tiny_checkpoint, tmp_path, capsys
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from marketpulse.checkpoint import read_test_split
    from marketpulse.train.fit import Fit
    from marketpulse.train.trainer import prepare, save_and_score, write_test_rows

    cfg = config(duplicated_db, tmp_path / "model", tiny_checkpoint)
    prepared = prepare(cfg)
    err = capsys.readouterr().err
    assert (
        "1 duplicate text kept once (2 rows skipped); 3 texts had conflicting labels "
        "(1 kept with its majority label, 2 dropped; 8 rows skipped)"
    ) in err
    assert f"read {len(DISTINCT_ROWS) + len(DUPLICATED_ROWS)} rows" in err
    assert "10 skipped (2 duplicate, 8 conflicting label)" in err

    # score the test rows with the untrained tiny model: metrics.json, no training
    out = tmp_path / "stage"
    out.mkdir()
    write_test_rows(out, prepared)
    fit = Fit(
        model=AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint).eval(),
        tokenizer=AutoTokenizer.from_pretrained(tiny_checkpoint),
        best_macro_f1=None,
        best_epoch=None,
        epochs_run=0.0,
        stopped_early=False,
        curve=[],
        train_time_s=0.0,
        train_rows_per_s=0.0,
    )
    checkpoint = save_and_score(cfg, prepared, fit, time.perf_counter(), out)
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert rows["read"] == len(DISTINCT_ROWS) + len(DUPLICATED_ROWS)
    assert rows["used"] == len(DISTINCT_ROWS) + 3
    assert rows["skipped"] == {
        "null_text": 0,
        "empty_text": 0,
        "null_label": 0,
        "duplicate": 2,
        "conflicting_label": 8,
    }
    assert rows["duplicate_texts"] == {
        "repeated": 1,
        "conflicting": 3,
        "majority_kept": 1,
        "dropped": 2,
    }
    assert sum(rows["split"].values()) == rows["used"]
    test_texts, _ = read_test_split(checkpoint)
    assert len({t.strip() for t in test_texts}) == len(test_texts)


def test_no_duplicates_changes_nothing(tmp_path):
    csv = write_csv(tmp_path / "labeled.csv", DISTINCT_ROWS)
    read = load_labeled(DataSource(input=csv))
    rows = drop_duplicates(read)
    assert (rows.texts, rows.labels) == (read.texts, read.labels)
    assert rows.skipped == {**read.skipped, "duplicate": 0, "conflicting_label": 0}
    assert rows.fingerprint() == read.fingerprint()
    assert rows.duplicates.log_line() is None
    twice = drop_duplicates(
        load_labeled(
            DataSource(input=write_csv(tmp_path / "twice.csv", [*DISTINCT_ROWS, DISTINCT_ROWS[0]]))
        )
    )
    assert twice.duplicates.log_line() == (
        "1 duplicate text kept once (1 row skipped); no text had conflicting labels"
    )


def test_every_row_dropped_is_the_one_line_error(tmp_path, tiny_checkpoint):
    ties = [("Fed holds rates", "neutral"), ("Fed holds rates", "bullish")]
    ties += [("Oil slides", "bearish"), ("Oil slides", "neutral")]
    db = write_db(tmp_path / "ties.duckdb", ties)
    out = tmp_path / "model"
    result = CliRunner().invoke(main, train_args(db, out, tiny_checkpoint))
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error == [
        "Error: column 'tag' has 0 distinct label(s) (found: none) after skipping 4 rows "
        "(4 conflicting label); training needs at least two classes, "
        "give each repeated text one label, or pass a different --label-col"
    ]
    assert not out.exists()
    from marketpulse.train.trainer import prepare

    with pytest.raises(MarketpulseError, match="0 distinct label"):
        prepare(config(db, out, tiny_checkpoint))
