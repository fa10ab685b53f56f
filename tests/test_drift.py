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


def relabeled_bundle(bundle, tmp_path, labels):
    """The bundle with its labels renamed (same logit order), exported the normal way:
    `write_manifest` sorts the manifest's keys, the reference's label counts included."""
    from marketpulse.bundle import read_manifest, write_manifest

    out = tmp_path / "relabeled"
    shutil.copytree(bundle.path, out)
    manifest = read_manifest(out)
    renamed = dict(zip(bundle.labels, labels, strict=True))
    manifest["labels"] = list(labels)
    ref = manifest[DRIFT_REFERENCE]
    ref["labels"] = {renamed[k]: v for k, v in ref["labels"].items()}
    write_manifest(out, manifest)
    return load_bundle(out)


def test_labels_out_of_alphabetical_order_are_compared_in_the_bundles_order(
    bundle, tmp_path, capfd
):
    labels = sorted(bundle.labels, reverse=True)  # never alphabetical
    b = relabeled_bundle(bundle, tmp_path, [f"{x}_{i}" for i, x in enumerate(labels)])
    stats, (psi_label, psi_conf, _, _), _ = run(tmp_path, b, IN_DOMAIN, capfd)
    assert stats.status == "completed"
    assert psi_label is not None and psi_conf is not None


def test_an_unreadable_reference_scores_with_a_note_and_closes_the_run(bundle, tmp_path, capfd):
    ref = dict(bundle.drift_reference)
    ref.pop("rows")
    b = copy_bundle(bundle, tmp_path, ref)
    stats, (psi_label, _, _, note), err = run(tmp_path, b, IN_DOMAIN[:20], capfd)
    assert stats.status == "completed" and psi_label is None
    assert "drift reference is unreadable" in note and "re-export" in err


def test_a_drift_failure_at_the_end_still_closes_the_run_row(bundle, tmp_path, capfd, monkeypatch):
    from marketpulse.runtime import drift as run_drift

    def broken(self):
        raise ValueError("operands could not be broadcast")

    monkeypatch.setattr(run_drift.RunDrift, "finish", broken)
    stats, (psi_label, _, _, note), _ = run(tmp_path, bundle, IN_DOMAIN[:20], capfd)
    assert stats.status == "completed" and stats.rows_scored == 20
    db = duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True)
    assert db.execute("SELECT status FROM runs").fetchone() == ("completed",)
    db.close()
    assert psi_label is None and note == "drift not measured: operands could not be broadcast"


def test_drift_warn_says_whether_the_run_warned(bundle, tmp_path, capfd):
    b = copy_bundle(bundle, tmp_path, in_domain_reference(bundle))
    found = []
    for texts in (IN_DOMAIN[:20], IN_DOMAIN, EMOJI):  # too few rows to warn on, quiet, warned
        for name in ("m.duckdb", "m.duckdb.wal"):
            (tmp_path / name).unlink(missing_ok=True)
        run(tmp_path, b, texts, capfd)
        con = duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True)
        found.append(con.execute("SELECT drift_warn FROM runs").fetchone()[0])
        con.close()
    assert found == [None, False, True]


def test_a_reference_of_few_rows_gives_figures_but_no_warning(bundle, tmp_path, capfd):
    # the tiny bundle's own reference: 26 sentences, against emoji posts that would warn
    assert bundle.drift_reference["rows"] < drift.MIN_ROWS
    stats, (psi_label, _, unknown, note), err = run(tmp_path, bundle, EMOJI, capfd)
    assert psi_label is not None and unknown == 1.0
    assert "reference holds only 26 rows" in note and "warning: drift" not in err
    assert stats.drift["warn"] is None


def test_a_warning_on_unknown_tokens_alone_does_not_blame_psi():
    from marketpulse.runtime.drift import _hint

    d = drift.Drift(500, 0.01, 0.02, 0.1, 0.001, ["10.0% of texts are unknown-token heavy"])
    assert "PSI" not in _hint(d) and "encoding" in _hint(d)


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
    again = drift.Profile.from_manifest(p.to_manifest(), ["a", "b"])
    assert again.label_counts.tolist() == [1, 2] and again.rows == 3


def test_the_reference_keeps_the_bundles_label_order_through_a_sorted_manifest():
    p = drift.Profile(["sell", "buy", "hold"])
    p.add(np.array([0, 0, 0, 1, 2]), np.full(5, 0.9), 0)
    written = json.loads(json.dumps(p.to_manifest(), sort_keys=True))  # as write_manifest does
    again = drift.Profile.from_manifest(written, ["sell", "buy", "hold"])
    assert again.label_counts.tolist() == [3, 1, 1]
    assert drift.compare(again, p).psi_label == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda ref: ref.pop("rows"), "KeyError"),
        (lambda ref: ref.update(labels={"x": 1, "y": 2}), "not the bundle's"),
        (
            lambda ref: ref.update(
                confidence_edges=[i / 20 for i in range(21)], confidence_counts=[0] * 20
            ),
            "confidence bins",
        ),
    ],
)
def test_an_unreadable_reference_is_refused_with_the_reason(change, why):
    p = drift.Profile(["a", "b"])
    p.add(np.array([0, 1]), np.array([0.6, 0.9]), 0)
    ref = p.to_manifest()
    change(ref)
    with pytest.raises(drift.UnreadableReference, match=why):
        drift.Profile.from_manifest(ref, ["a", "b"])


def test_a_reference_counted_at_another_unknown_cut_off_is_not_compared_on_it():
    p = drift.Profile(["a", "b"])
    p.add(np.array([0, 1]), np.array([0.6, 0.9]), 1)
    ref = p.to_manifest() | {"unknown_heavy_fraction": 0.25}
    assert drift.Profile.from_manifest(ref, ["a", "b"]).unknown_heavy is None
