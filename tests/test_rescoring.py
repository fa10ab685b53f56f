"""int8 rows that hesitate are rescored by fp32: at scoring, at export's gate, under auto.

The spread bundle (a randomised tiny model, so many rows hesitate) is exported with the
default rescore margin. A row's rescoring depends on its own int8 probabilities only, so
the determinism test (test_determinism.py) covers rescored rows as well.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime_support import forge_timings, make_source, spread_bundle, with_gate

from marketpulse import cpu
from marketpulse.bundle import MANIFEST
from marketpulse.checkpoint import load_checkpoint
from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.export.checks import load_check_texts
from marketpulse.export.stage import DEFAULT_RESCORE_MARGIN
from marketpulse.export.summary import format_manifest
from marketpulse.inference.predictor import (
    Predictor,
    cuda_provider_available,
    default_session_options,
    rescored_logits,
    top_two_margin,
)
from marketpulse.runtime import ScoreConfig, autovariant, score

WORDS = "shares rally tumble oil guidance fed rates cut beat miss earnings record low".split()


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


@pytest.fixture(scope="module")
def texts():
    rng = np.random.default_rng(3)
    return [f"{i} " + " ".join(rng.choice(WORDS, rng.integers(1, 30))) for i in range(400)]


def test_hesitant_rows_get_fp32_probabilities_and_the_rest_keep_int8(bundle, texts):
    assert bundle.rescore_margin("int8") == DEFAULT_RESCORE_MARGIN
    assert bundle.rescore_margin("fp32") == 0.0
    rescoring = Predictor(bundle, "int8", threads=2)
    alone = Predictor(bundle, "int8", threads=2, rescore_margin=0)
    reference = Predictor(bundle, "fp32", threads=2)
    assert "rescored by fp32" in rescoring.describe() and alone._rescorer is None
    encoded = rescoring.encoder.encode(texts)
    got = rescoring.run_batches(encoded, batch_tokens=256)
    own = alone.run_batches(encoded, batch_tokens=512).probs
    fp32 = reference.run_batches(encoded, batch_tokens=128).probs
    hesitant = top_two_margin(own) < DEFAULT_RESCORE_MARGIN
    assert 0 < hesitant.sum() < len(texts)  # both kinds of row occur
    np.testing.assert_array_equal(got.rescored, hesitant)
    np.testing.assert_allclose(got.probs[hesitant], fp32[hesitant], atol=1e-6)
    np.testing.assert_allclose(got.probs[~hesitant], own[~hesitant], atol=1e-6)
    assert not got.failed.any() and got.error is None
    # export's rule on logits is the runtime's on probabilities
    logits = np.log(np.clip(own, 1e-30, None))
    _, mask = rescored_logits(logits, np.log(fp32), DEFAULT_RESCORE_MARGIN)
    np.testing.assert_array_equal(mask, hesitant)


def test_a_bundle_without_a_margin_is_never_rescored(bundle, tmp_path, texts):
    old = with_gate(bundle, tmp_path, True, rescoring=False)
    predictor = Predictor(old, "int8", threads=1)
    assert old.rescore_margin("int8") == 0.0 and predictor._rescorer is None
    assert not predictor.run_batches(predictor.encoder.encode(texts[:50])).rescored.any()
    with pytest.raises(MarketpulseError, match="--rescore-margin 1.5 is outside 0..1"):
        Predictor(bundle, "int8", threads=1, rescore_margin=1.5)


def test_export_gates_int8_as_it_runs_and_records_it_alone(bundle):
    """The gate's int8 agreement is with the rescoring; the graph alone is recorded beside.
    Both recomputed here against the fp32 graph (PyTorch's within 1e-4) on the texts the
    gate checked (this checkpoint has no test split: the built-in market sentences)."""
    result = bundle.manifest["checks"]["variants"]["int8"]
    assert result["rescore_margin"] == DEFAULT_RESCORE_MARGIN
    checkpoint = load_checkpoint(bundle.manifest["source_checkpoint"])
    texts = load_check_texts(checkpoint, None).texts
    fp32 = Predictor(bundle, "fp32", threads=1).predict_proba(texts).argmax(axis=1)
    rescoring = Predictor(bundle, "int8", threads=1).predict_proba(texts).argmax(axis=1)
    own = Predictor(bundle, "int8", threads=1, rescore_margin=0).predict_proba(texts)
    hesitant = top_two_margin(own) < DEFAULT_RESCORE_MARGIN
    near = 2 / len(texts)  # a near-tie PyTorch and the fp32 graph break differently
    assert result["rescored_share"] == pytest.approx(hesitant.mean(), abs=near)
    assert result["agreement"] == pytest.approx((rescoring == fp32).mean(), abs=near)
    alone = (own.argmax(axis=1) == fp32).mean()
    assert result["agreement_without_rescoring"] == pytest.approx(alone, abs=near)
    assert result["agreement"] > result["agreement_without_rescoring"]  # it did something
    verdict = bundle.manifest["checks"]["gate"]["variants"]["int8"]
    assert verdict["test_agreement"] == result["agreement"]
    shown = format_manifest(bundle.path, bundle.manifest)  # what export and inspect print
    alone = f"alone it agreed on {result['agreement_without_rescoring']:.2%}"
    assert f"rows within {DEFAULT_RESCORE_MARGIN:g} rescored by fp32 (" in shown and alone in shown
    option = next(p for p in main.commands["export"].params if p.name == "rescore_margin")
    assert option.default == DEFAULT_RESCORE_MARGIN  # the CLI's default is export's


def test_a_run_counts_its_rescored_rows(bundle, tmp_path):
    db = tmp_path / "m.duckdb"
    make_source(db, 120)
    cfg = ScoreConfig(db, "posts", "id", "text", bundle.path, variant="int8", chunk_rows=50)
    stats = score(cfg)
    with duckdb.connect(str(db), read_only=True) as con:
        texts = [
            r[0]
            for r in con.execute(
                "SELECT p.text FROM posts p JOIN scores s USING (id) WHERE s.label IS NOT NULL"
            ).fetchall()
        ]
        recorded = con.execute("SELECT rows_rescored, rows_scored FROM runs").fetchone()
    alone = Predictor(bundle, "int8", threads=1, rescore_margin=0).predict_proba(texts)
    expected = int((top_two_margin(alone) < DEFAULT_RESCORE_MARGIN).sum())
    assert expected > 0
    assert recorded == (stats.rows_rescored, stats.rows_scored)
    assert stats.rows_rescored == expected
    assert f"({expected:,} rescored by fp32)" in stats.summary()


def auto_config(bundle, tmp_path, int8_speedup: float, **kw) -> ScoreConfig:
    """`--variant auto` on 60 rows: int8 timed `int8_speedup` x fp32 and past its gate."""
    cache = tmp_path / "cache"
    forge_timings(bundle, cache, int8_speedup)
    passed = with_gate(bundle, tmp_path, True)
    db = tmp_path / "m.duckdb"
    make_source(db, 60)
    return ScoreConfig(db, "posts", "id", "text", passed.path, cache_dir=cache, **kw)


@pytest.mark.skipif(cuda_provider_available(), reason="auto times CPU graphs only")
def test_auto_prices_the_rescoring_and_runs_fp32_when_it_eats_the_speed_up(bundle, tmp_path):
    """int8 3x fp32 alone, but when fp32 must rescore nearly every row it is slower."""

    class HesitantInt8(Predictor):
        """fp32 under int8's name, rescoring rows within `margin` by fp32."""

        margin = 0.999

        def __init__(self, bundle, variant=None, *args, **kwargs):
            super().__init__(bundle, "fp32" if variant == "int8" else variant, *args, **kwargs)
            if variant == "int8":
                self.variant, self.rescore_margin = "int8", self.margin
                self._rescorer = self._cpu_session("fp32", default_session_options())

    cfg = auto_config(bundle, tmp_path, 3.0, auto_check_rows=20)
    stats = score(cfg, predictor_type=HesitantInt8)
    assert stats.variant == "fp32"
    assert stats.variant_reason.startswith("auto: fp32, int8 only 0.7")
    assert "x fp32 once fp32 rescores its hesitant rows (100.0% of 20 rows sampled" in (
        stats.variant_reason
    )
    HesitantInt8.margin = 1e-12  # nothing hesitates: the 3x stands
    cfg.db.unlink()
    make_source(cfg.db, 60)
    stats = score(cfg, predictor_type=HesitantInt8)
    assert stats.variant == "int8"
    assert stats.variant_reason == (
        f"auto: int8 3.00x fp32 on {cpu.isa()}, passed gate; disagreed with fp32 on 0.0% "
        "of 20 rows sampled from the rows to score (0.0% of them rescored by fp32)"
    )


def test_the_speed_up_with_rescoring():
    rates = {"fp32": 100.0, "int8": 200.0}
    assert autovariant.with_rescoring(rates, "int8", 0.0) == pytest.approx(2.0)
    assert autovariant.with_rescoring(rates, "int8", 0.1) == pytest.approx(1 / 0.6)
    assert autovariant.with_rescoring(None, "int8", 0.1) is None


def test_score_rescore_margin_zero_runs_int8_alone(bundle, tmp_path):
    """`score --rescore-margin 0`: the bundle's int8 graph alone, nothing rescored."""
    db = tmp_path / "m.duckdb"
    make_source(db, 120)
    args = ["score", "--db", str(db), "--table", "posts", "--id-col", "id", "--text-col", "text"]
    args += ["--bundle", str(bundle.path), "--variant", "int8", "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--rescore-margin", "0", "--results-table", "alone"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*args, "--results-table", "rescored"])
    assert result.exit_code == 0, result.output
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute("SELECT rescore_margin, rows_rescored FROM runs ORDER BY started_at")
        (zero, none), (margin, some) = runs.fetchall()
        changed = con.execute(
            "SELECT count(*) FROM alone a JOIN rescored r USING (id) WHERE a.confidence <> r.confidence"
        ).fetchone()[0]
    assert none == 0 and some > 0 and changed == some
    assert (zero, margin) == (0.0, DEFAULT_RESCORE_MARGIN)  # what each run went by
    bad = CliRunner().invoke(main, [*args, "--rescore-margin", "1"])
    assert bad.exit_code == 2 and "--rescore-margin" in bad.output


def test_check_texts_are_gated_with_the_rescoring_too(bundle, tmp_path):
    """Export with check texts: their figures carry the rescoring, and the summary says
    how much of each set was rescored."""
    from marketpulse.export import ExportConfig, run
    from marketpulse.export.checks import CheckSource

    rng = np.random.default_rng(5)
    texts = [f"{i} " + " ".join(rng.choice(WORDS, rng.integers(2, 25))) for i in range(400)]
    check = tmp_path / "check.csv"
    duckdb.sql("SELECT unnest(?) AS text", params=[texts]).write_csv(str(check))
    out = run(
        ExportConfig(
            model=bundle.manifest["source_checkpoint"],
            out=tmp_path / "bundle",
            variants=("fp32", "int8"),
            allow_accuracy_drop=True,
            max_length=48,
            check_source=CheckSource(input=check),
        )
    )
    sample = out.manifest["checks"]["check_texts"]
    result = sample["variants"]["int8"]
    assert result["rescore_margin"] == DEFAULT_RESCORE_MARGIN
    assert 0 < result["rescored_share"] < 1
    assert result["agreement"] > result["agreement_without_rescoring"]
    assert (
        out.manifest["checks"]["gate"]["variants"]["int8"]["check_agreement"]
        == (result["agreement"])
    )
    shown = format_manifest(out.path, out.manifest)
    assert f"{result['rescored_share']:.1%} of the check texts" in shown


def test_ray_counts_the_same_rescored_rows_as_the_local_engine(bundle, tmp_path):
    pytest.importorskip("ray", reason="Ray is an extra: pip install 'marketpulse[ray]'")
    from marketpulse.runtime.ray_engine import score_with_ray

    counts = {}
    for name, engine in (("local", score), ("ray", score_with_ray)):
        db = tmp_path / f"{name}.duckdb"
        make_source(db, 150)
        cfg = ScoreConfig(db, "posts", "id", "text", bundle.path, variant="int8", progress=False)
        kwargs = {"workers": 1} if name == "ray" else {}
        stats = engine(cfg, **kwargs)
        with duckdb.connect(str(db), read_only=True) as con:
            counts[name] = con.execute("SELECT rows_rescored, rescore_margin FROM runs").fetchone()
        assert counts[name][0] == stats.rows_rescored > 0
    assert counts["ray"] == counts["local"] == (counts["local"][0], DEFAULT_RESCORE_MARGIN)


@pytest.mark.skipif(cuda_provider_available(), reason="auto times CPU graphs only")
def test_auto_does_not_run_int8_with_less_rescoring_than_its_gate_saw(bundle, tmp_path):
    cfg = auto_config(bundle, tmp_path, 3.0, rescore_margin=0.05)
    stats = score(cfg)
    assert stats.variant == "fp32" and stats.rescore_margin == 0.0
    assert stats.variant_reason.startswith(
        "auto: fp32, int8 passed export's gate with the rows within 0.2 rescored by fp32, and "
        "--rescore-margin 0.05 rescores fewer (pass --variant int8 to run it so)"
    )


@pytest.mark.skipif(cuda_provider_available(), reason="auto times CPU graphs only")
def test_without_the_sample_check_auto_prices_the_share_export_saw(bundle, tmp_path):
    cfg = auto_config(bundle, tmp_path, 1.2, auto_check_rows=0)
    manifest = json.loads((cfg.bundle / MANIFEST).read_text())
    manifest["checks"]["variants"]["int8"]["rescored_share"] = 0.5  # 1 / (1/1.2 + 0.5) = 0.75
    (cfg.bundle / MANIFEST).write_text(json.dumps(manifest))
    stats = score(cfg)
    assert stats.variant == "fp32"
    assert stats.variant_reason.startswith(
        "auto: fp32, int8 only 0.75x fp32 once fp32 rescores its hesitant rows (50.0% of "
        "export's test split; below 1.1x)"
    )


def test_explain_gives_each_row_the_label_and_probability_its_run_wrote(bundle, tmp_path):
    """A run with its own --rescore-margin: explain reads it from `runs`, and decides per
    text once, so the full text's probability is exactly the one scored."""
    pytest.importorskip("presidio_analyzer")
    from marketpulse.runtime.explanations import ExplainConfig, explain_table

    db = tmp_path / "m.duckdb"
    make_source(db, 60)
    cfg = ScoreConfig(db, "posts", "id", "text", bundle.path, variant="int8", rescore_margin=0.6)
    stats = score(cfg)
    assert stats.rows_rescored > 0
    seen = {}
    explain_table(
        ExplainConfig(
            db=db, table="posts", id_col="id", text_col="text", bundle=bundle.path, limit=60
        ),
        on_row=lambda row_id, e, words: seen.__setitem__(row_id, (e.label, e.probability)),
    )
    with duckdb.connect(str(db), read_only=True) as con:
        scored = con.execute(
            "SELECT CAST(id AS VARCHAR), label, confidence FROM scores WHERE label IS NOT NULL"
        ).fetchall()
    assert len(seen) == len(scored) > 0
    for row_id, label, confidence in scored:
        assert seen[row_id][0] == label
        assert seen[row_id][1] == pytest.approx(confidence, abs=1e-5)


def test_a_bundle_exported_with_rescoring_off_says_so(bundle, tmp_path):
    """`export --rescore-margin 0` records 0 (a bundle from before the margin has none),
    and inspect says rescoring is off rather than nothing (user test)."""
    from marketpulse.export import ExportConfig, run

    off = run(
        ExportConfig(
            model=bundle.manifest["source_checkpoint"],
            out=tmp_path / "off",
            variants=("fp32", "int8"),
            allow_accuracy_drop=True,
            max_length=48,
            rescore_margin=0,
        )
    )
    manifest = json.loads((off.path / MANIFEST).read_text())  # as written
    assert manifest["variants"]["int8"]["rescore_margin"] == 0
    assert off.rescore_margin("int8") == 0.0
    assert "rescored_share" not in manifest["checks"]["variants"]["int8"]
    assert "rescoring off (exported with --rescore-margin 0)" in format_manifest(off.path, manifest)
    manifest["variants"]["int8"].pop("rescore_margin")
    assert "rescoring off" not in format_manifest(off.path, manifest)
