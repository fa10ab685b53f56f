"""Drift per run: PSI against the bundle's reference, recorded in `runs`, warned above 0.2."""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from test_runtime_support import spread_bundle

from marketpulse import drift
from marketpulse.bundle import DRIFT_REFERENCE, MANIFEST, load_bundle
from marketpulse.export.checks import MARKET_SENTENCES
from marketpulse.runtime import ScoreConfig, score

EXTRA = ["on strong demand", "after the report", "as investors wait", "amid rate fears", ""]
# In-domain: market headlines, recombined. Out of domain: emoji-only posts, which the
# tokenizer can only read as [UNK].
IN_DOMAIN = [f"{s} {e}".strip() for s in MARKET_SENTENCES for e in EXTRA] * 2
EMOJI = ["🚀🚀🌕 💎🙌", "🔥📈🐂🐂", "😱📉🐻 💸💸", "🤡🤡 🍿"] * 40


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


def copy_bundle(bundle, tmp_path, reference=...):
    """The bundle with its manifest's drift reference replaced (None: removed)."""
    out = tmp_path / "bundle"
    shutil.copytree(bundle.path, out)
    manifest = json.loads((out / MANIFEST).read_text())
    if reference is None:
        manifest.pop(DRIFT_REFERENCE)
    elif reference is not ...:
        manifest[DRIFT_REFERENCE] = reference
    (out / MANIFEST).write_text(json.dumps(manifest))
    return load_bundle(out)


def make_db(path, texts):
    con = duckdb.connect(str(path))
    con.register("t", pa.table({"id": list(range(len(texts))), "text": texts}))
    con.execute("CREATE TABLE posts AS SELECT * FROM t")
    con.close()


def run(tmp_path, bundle, texts, capfd):
    db = tmp_path / "m.duckdb"
    make_db(db, texts)
    stats = score(
        ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path)
    )
    err = capfd.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    row = con.execute(
        "SELECT psi_label, psi_confidence, unknown_heavy_share, drift_note FROM runs"
    ).fetchone()
    con.close()
    return stats, row, err


def in_domain_reference(bundle):
    from marketpulse.inference.predictor import Predictor

    predictor = Predictor(bundle, device="cpu")
    texts = [f"{s} {e}".strip() for s in MARKET_SENTENCES for e in reversed(EXTRA)]
    encoded = predictor.encoder.encode(texts)
    probs = predictor.predict_encoded(encoded)
    return drift.reference(probs, encoded.ids, bundle.tokenizer_path, bundle.labels, "test")


def test_psi_is_zero_for_equal_mixes_and_large_for_a_moved_one():
    assert drift.psi([50, 30, 20], [500, 300, 200]) == pytest.approx(0.0)
    assert drift.psi([50, 30, 20], [52, 29, 19]) < 0.01
    assert drift.psi([50, 30, 20], [10, 20, 70]) > drift.PSI_WARN


def test_export_stores_the_reference_profile(bundle):
    ref = bundle.drift_reference
    assert ref["rows"] == len(MARKET_SENTENCES)  # the tiny checkpoint has no test split
    assert sum(ref["labels"].values()) == sum(ref["confidence_counts"]) == ref["rows"]
    assert ref["unknown_heavy"] == 0


def test_in_domain_run_records_figures_and_stays_quiet(bundle, tmp_path, capfd):
    b = copy_bundle(bundle, tmp_path, in_domain_reference(bundle))
    stats, (psi_label, psi_conf, unknown, note), err = run(tmp_path, b, IN_DOMAIN, capfd)
    assert stats.rows_scored == len(IN_DOMAIN)
    assert psi_label < drift.PSI_WARN and psi_conf < drift.PSI_WARN, (psi_label, psi_conf)
    assert unknown == 0.0 and note is None
    assert "warning: drift" not in err
    assert stats.drift["warn"] is False


def test_emoji_posts_warn_on_unknown_tokens(bundle, tmp_path, capfd):
    b = copy_bundle(bundle, tmp_path, in_domain_reference(bundle))
    stats, (_, _, unknown, note), err = run(tmp_path, b, EMOJI, capfd)
    assert unknown == 1.0
    assert "unknown-token heavy" in note
    assert "warning: drift" in err and stats.drift["warn"] is True


def test_a_moved_label_mix_warns(bundle, tmp_path, capfd):
    ref = in_domain_reference(bundle)
    # A reference where every text got the label this model gives in-domain text least.
    labels = list(ref["labels"])
    rare = min(labels, key=lambda k: ref["labels"][k])
    ref["labels"] = {k: (ref["rows"] if k == rare else 0) for k in labels}
    b = copy_bundle(bundle, tmp_path, ref)
    stats, (psi_label, _, _, note), err = run(tmp_path, b, IN_DOMAIN, capfd)
    assert psi_label > drift.PSI_WARN
    assert "label mix PSI" in note and "warning: drift" in err


def test_bundle_without_reference_scores_with_a_note(bundle, tmp_path, capfd):
    b = copy_bundle(bundle, tmp_path, None)
    stats, (psi_label, psi_conf, _, note), err = run(tmp_path, b, IN_DOMAIN[:20], capfd)
    assert stats.status == "completed" and stats.rows_scored == 20
    assert psi_label is None and psi_conf is None
    assert "no drift reference" in note and "re-export" in err


def test_a_runs_table_from_before_drift_gets_the_new_columns(bundle, tmp_path, capfd):
    db = tmp_path / "m.duckdb"
    make_db(db, IN_DOMAIN[:10])
    con = duckdb.connect(str(db))
    con.execute(  # the runs table as the previous release created it
        "CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, model_version VARCHAR, source VARCHAR, "
        "rows_scored BIGINT, rows_skipped BIGINT, rows_failed BIGINT, started_at TIMESTAMP, "
        "finished_at TIMESTAMP, rows_per_s DOUBLE, status VARCHAR, rows_truncated BIGINT, "
        "results_table VARCHAR, source_db VARCHAR, filter VARCHAR, row_limit BIGINT, "
        "provider VARCHAR, variant VARCHAR, error VARCHAR, engine VARCHAR)"
    )
    con.execute("INSERT INTO runs (run_id, status) VALUES ('old', 'completed')")
    con.close()
    stats = score(
        ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path)
    )
    assert stats.status == "completed"
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT run_id, psi_label IS NULL, drift_note FROM runs ORDER BY run_id = 'old'"
    ).fetchall()
    con.close()
    assert rows[1] == ("old", True, None)
    assert rows[0][1] is False  # this run measured (10 rows: figures, no warning)
    assert "only 10 rows" in rows[0][2]


def test_profile_counts_match_numpy():
    p = drift.Profile(["a", "b"])
    p.add(np.array([0, 1, 1]), np.array([0.55, 0.95, 1.0]), 1)
    assert p.label_counts.tolist() == [1, 2]
    assert p.confidence_counts[5] == 1 and p.confidence_counts[9] == 2
    assert p.unknown_share == pytest.approx(1 / 3)
    again = drift.Profile.from_manifest(p.to_manifest())
    assert again.label_counts.tolist() == [1, 2] and again.rows == 3
