"""The canary: a seeded sample of each run's scored rows rescored by the fp32 graph."""

from __future__ import annotations

import time

import duckdb
import numpy as np
import pytest
from test_runtime_support import make_source, spread_bundle, with_gate

from marketpulse.inference.batching import Encoded
from marketpulse.inference.predictor import Predictor
from marketpulse.runtime import ScoreConfig, score
from marketpulse.runtime.canary import DISABLED, REFERENCE_RAN, Canary
from marketpulse.runtime.windows import Window

N = 400


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


def run(tmp_path, bundle, predictor_type=Predictor, **cfg):
    db = tmp_path / "m.duckdb"
    if not db.exists():
        tmp_path.mkdir(exist_ok=True)
        make_source(db, N)
    config = dict(device="cpu", chunk_rows=100, progress=False, cache_dir=tmp_path / "cache")
    config.update(cfg)
    stats = score(
        ScoreConfig(
            db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, **config
        ),
        predictor_type=predictor_type,
    )
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(
            "SELECT variant, canary_rows, canary_disagree_share, canary_note FROM runs "
            "WHERE run_id = ?",
            [stats.run_id],
        ).fetchone()
    finally:
        con.close()
    return stats, row


class SlowReference(Predictor):
    """The real graphs, but loading the fp32 reference outlasts all the run did before
    it: a run's seconds that counted the canary would exceed the canary's own."""

    loaded = 0.0  # when the graph that runs was loaded, before the run's clock starts

    def __init__(self, bundle, variant=None, *args, **kwargs):
        if variant == "fp32":
            time.sleep(min(time.perf_counter() - SlowReference.loaded, 10.0) + 0.2)
        super().__init__(bundle, variant, *args, **kwargs)
        if variant != "fp32":
            SlowReference.loaded = time.perf_counter()


def test_an_int8_run_records_its_canary(bundle, tmp_path):
    stats, (variant, rows, share, note) = run(tmp_path, bundle, SlowReference, variant="int8")
    assert stats.status == "completed" and variant == "int8"
    assert rows == 256 and 0.0 <= share <= 1.0
    assert stats.canary["rows"] == 256 and stats.canary["disagree_share"] == share
    assert (note is not None) == (share > 0.01)
    # the rescoring is timed on its own, not in the run's seconds or rows/s
    assert stats.canary["seconds"] > stats.seconds > 0
    con = duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True)
    (rows_per_s,) = con.execute(
        "SELECT rows_per_s FROM runs WHERE run_id = ?", [stats.run_id]
    ).fetchone()
    con.close()
    assert rows_per_s == pytest.approx(stats.rows_per_s)
    assert rows_per_s == pytest.approx((stats.rows_scored + stats.rows_skipped) / stats.seconds)


def test_an_fp32_run_records_no_canary_and_says_why(bundle, tmp_path):
    _, row = run(tmp_path, bundle, variant="fp32")
    assert row == ("fp32", 0, None, REFERENCE_RAN)
    _, row = run(tmp_path / "off", bundle, variant="int8", canary_rows=0, limit=50)
    assert row == ("int8", 0, None, DISABLED)


class FlippedReference(Predictor):
    """The real graphs, except that fp32 swaps the first two logits: every label differs
    from the graph that ran wherever one of the two won."""

    def run(self, input_ids, attention_mask, session=None):
        logits = super().run(input_ids, attention_mask, session)
        return logits[:, [1, 0, 2]] if self.variant == "fp32" else logits


def test_a_canary_above_one_percent_warns(bundle, tmp_path, capfd):
    stats, (_, rows, share, note) = run(
        tmp_path, bundle, FlippedReference, variant="int8", canary_rows=64, progress=True
    )
    assert rows == 64 and share > 0.01
    assert "differs from the fp32 graph's" in note
    err = capfd.readouterr().err
    assert "warning: canary: the int8 graph's top-1 label differs" in err
    assert "--variant fp32" in err and stats.canary["warn"] is True


def test_an_old_runs_table_gets_the_new_columns(bundle, tmp_path):
    db = tmp_path / "m.duckdb"
    make_source(db, 50)
    con = duckdb.connect(str(db))
    con.execute(  # the runs table as the release before the canary created it
        "CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, model_version VARCHAR, source VARCHAR, "
        "rows_scored BIGINT, rows_skipped BIGINT, rows_failed BIGINT, started_at TIMESTAMP, "
        "finished_at TIMESTAMP, rows_per_s DOUBLE, status VARCHAR, rows_truncated BIGINT, "
        "results_table VARCHAR, source_db VARCHAR, filter VARCHAR, row_limit BIGINT, "
        "provider VARCHAR, variant VARCHAR, error VARCHAR, engine VARCHAR, psi_label DOUBLE, "
        "psi_confidence DOUBLE, unknown_heavy_share DOUBLE, drift_note VARCHAR, "
        "rows_duplicate BIGINT)"
    )
    con.execute("INSERT INTO runs (run_id, status) VALUES ('old', 'completed')")
    con.close()
    stats, row = run(tmp_path, bundle, variant="int8")
    assert stats.status == "completed" and row[1] > 0
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT run_id, variant_reason, canary_rows, canary_note FROM runs ORDER BY run_id = 'old'"
    ).fetchall()
    con.close()
    assert rows[1] == ("old", None, None, None)
    assert rows[0][1] == "--variant int8" and rows[0][2] == stats.rows_scored


def window(lengths, labels, failed=None) -> Window:
    """A scored window of len(lengths) distinct texts, token id i+100 in row i."""
    lengths = np.asarray(lengths, np.int64)
    flat = np.concatenate([np.full(n, 100 + i) for i, n in enumerate(lengths)])
    n = len(lengths)
    w = Window(ids=None, reasons=np.zeros(n, np.int8), valid=np.arange(n), distinct=np.arange(n))
    w.encoded = Encoded(flat.astype(np.int64), lengths, np.zeros(n, bool))
    w.probs = np.eye(3, dtype=np.float32)[np.asarray(labels)]
    w.failed = np.zeros(n, bool) if failed is None else np.asarray(failed)
    return w


def test_the_sample_does_not_depend_on_window_sizes_and_skips_failed_rows():
    rng = np.random.default_rng(5)
    lengths, labels = rng.integers(3, 9, 300), rng.integers(0, 3, 300)
    failed = np.zeros(300, bool)
    failed[::7] = True
    whole, parts = Canary(20), Canary(20)
    whole.add(window(lengths, labels, failed))
    for lo, hi in ((0, 17), (17, 150), (150, 300)):
        part = window(lengths[lo:hi], labels[lo:hi], failed[lo:hi])
        part.encoded.flat += lo  # same token ids as in the whole window
        parts.add(part)
    assert len(whole.ids) == 20
    assert [i.tolist() for i in whole.ids] == [i.tolist() for i in parts.ids]
    rows = [int(i[0]) - 100 for i in whole.ids]
    assert not failed[rows].any() and whole.labels == labels[rows].tolist()
    assert len(set(rows)) == 20 and max(rows) > 150  # spread over the run, not its start


class Reference:
    """Stands in for the fp32 Predictor: label = first token id mod 3."""

    def run_batches(self, encoded, batch_tokens=None):
        first = encoded.flat[encoded.starts] % 3
        return np.eye(3, dtype=np.float32)[first], np.zeros(len(first), bool), None


def test_finish_counts_the_rows_whose_label_differs():
    labels = [(100 + i) % 3 for i in range(10)]
    labels[2] = (labels[2] + 1) % 3  # one row of ten disagrees
    canary = Canary(10)
    canary.add(window([4] * 10, labels))
    result = canary.finish(Reference())
    assert (result.rows, result.disagree_share, result.warn) == (10, 0.1, True)
    assert Canary(10).finish(Reference()).rows == 0


def test_a_ray_run_records_why_it_has_no_canary(bundle, tmp_path):
    pytest.importorskip("ray", reason="Ray is an extra: pip install 'marketpulse[ray]'")
    from marketpulse.runtime.canary import RAY
    from marketpulse.runtime.ray_engine import score_with_ray

    db = tmp_path / "m.duckdb"
    make_source(db, 60)
    cfg = ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, device="cpu", variant="int8", threads=1, progress=False)  # fmt: skip
    stats = score_with_ray(cfg, workers=1)
    assert stats.status == "completed" and stats.rows_scored > 0
    con = duckdb.connect(str(db), read_only=True)
    row = con.execute("SELECT engine, canary_rows, canary_disagree_share, canary_note FROM runs")
    assert row.fetchone() == ("ray", None, None, RAY)
    con.close()


def test_a_ray_run_under_auto_records_the_graph_and_why(bundle, tmp_path):
    """The default --variant auto on Ray: timed on the driver, recorded like a local run.
    This copy's int8 failed export's gate, so auto must run fp32 and say so."""
    pytest.importorskip("ray", reason="Ray is an extra: pip install 'marketpulse[ray]'")
    from marketpulse.runtime.ray_engine import score_with_ray

    failed = with_gate(bundle, tmp_path, int8_passed=False)
    db = tmp_path / "m.duckdb"
    make_source(db, 60)
    cfg = ScoreConfig(db=db, table="posts", id_col="id", text_col="text", bundle=failed.path, device="cpu", threads=1, progress=False, cache_dir=tmp_path / "cache")  # fmt: skip
    assert cfg.variant == "auto"
    stats = score_with_ray(cfg, workers=1)
    assert stats.status == "completed" and stats.rows_scored > 0
    con = duckdb.connect(str(db), read_only=True)
    variant, reason = con.execute("SELECT variant, variant_reason FROM runs").fetchone()
    con.close()
    assert variant == "fp32" and reason.startswith("auto: fp32, int8 failed the export gate")


class BrokenReference(Predictor):
    """An fp32 graph that cannot load (a full disk, no memory): the canary cannot run."""

    def __init__(self, bundle, variant=None, *args, **kwargs):
        if variant == "fp32":
            raise RuntimeError("cannot allocate the fp32 session\nsecond line")
        super().__init__(bundle, variant, *args, **kwargs)


def test_a_canary_that_cannot_run_leaves_the_run_completed(bundle, tmp_path):
    stats, (variant, rows, share, note) = run(tmp_path, bundle, BrokenReference, variant="int8")
    assert stats.status == "completed" and variant == "int8"
    assert stats.rows_scored + stats.rows_skipped == N  # every row committed
    assert rows is None and share is None
    assert note == "canary not measured: cannot allocate the fp32 session"
