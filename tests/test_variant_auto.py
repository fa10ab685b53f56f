"""`--variant auto`: the fastest CPU graph that passed export's gate, timed once per machine."""

from __future__ import annotations

import json

import duckdb
import pytest
from click.testing import CliRunner
from test_runtime_support import forge_timings, make_source, spread_bundle, with_gate

from marketpulse import cpu
from marketpulse.bundle import gate_results
from marketpulse.cli import main
from marketpulse.inference.predictor import Predictor, cuda_provider_available
from marketpulse.runtime import ScoreConfig, autovariant, score
from marketpulse.text import is_blank

N = 120


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    return spread_bundle(tiny_checkpoint, tmp_path_factory)


@pytest.fixture(autouse=True)
def cpu_only():
    if cuda_provider_available():
        pytest.skip("auto times CPU graphs; this machine has a CUDA provider (device auto)")


def run(tmp_path, bundle_dir, cache, name="m", engine="local", **cfg):
    db = tmp_path / f"{name}.duckdb"
    make_source(db, N)
    engine_score = score
    if engine == "ray":
        from marketpulse.runtime.ray_engine import score_with_ray as engine_score
    stats = engine_score(
        ScoreConfig(
            db=db,
            table="posts",
            id_col="id",
            text_col="text",
            bundle=bundle_dir,
            cache_dir=cache,
            chunk_rows=50,
            **cfg,
        )
    )
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT variant, variant_reason FROM runs").fetchone()
    finally:
        con.close()
    return stats, row


def cache_file(bundle, cache):
    return autovariant.cache_path(cache, autovariant.machine_key(bundle))


def test_auto_times_once_then_reuses_the_cache(bundle, tmp_path, capfd):
    cache = tmp_path / "cache"
    stats, (variant, reason) = run(tmp_path, bundle.path, cache)
    err = capfd.readouterr().err
    path = cache_file(bundle, cache)
    saved = json.loads(path.read_text())
    assert saved["key"]["model_version"] == bundle.version
    assert set(saved["rows_per_s"]) == {"fp32", "int8"}
    assert min(saved["rows_per_s"].values()) > 0
    assert "auto: timed fp32, int8 on 32 texts" in err and str(path) in err
    assert variant == stats.variant and variant in ("fp32", "int8")
    assert reason == stats.variant_reason and reason.startswith(f"auto: {variant}")
    assert reason in err  # the log line says why
    gate = bundle.gate["int8"]
    assert ("int8 failed the export gate" in reason) == (not gate.passed)
    assert (cpu.isa() in reason) == gate.passed
    mtime = path.stat().st_mtime_ns

    stats, (again, _) = run(tmp_path, bundle.path, cache, name="second")
    err = capfd.readouterr().err
    assert f"auto: timings from {path}" in err and "auto: timed" not in err
    assert path.stat().st_mtime_ns == mtime and again == variant


def test_a_corrupt_or_stale_cache_is_measured_again(bundle, tmp_path, capfd):
    cache = tmp_path / "cache"
    path = cache_file(bundle, cache)
    path.parent.mkdir(parents=True)
    for bad in ("{not json", json.dumps({"key": {"model_version": "other"}, "rows_per_s": {}})):
        path.write_text(bad)
        run(tmp_path, bundle.path, cache, name=f"m{len(bad)}", limit=5)
        assert "auto: timed" in capfd.readouterr().err
        assert set(json.loads(path.read_text())["rows_per_s"]) == {"fp32", "int8"}


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_nothing_pending_times_no_graph(bundle, tmp_path, capfd, engine):
    if engine == "ray":
        pytest.importorskip("ray", reason="Ray is an extra: pip install 'marketpulse[ray]'")
    cache = tmp_path / "cache"
    stats, (variant, reason) = run(tmp_path, bundle.path, cache, limit=0, engine=engine)
    assert "auto: timed" not in capfd.readouterr().err
    assert not cache_file(bundle, cache).exists()
    assert stats.rows_scored == 0 and reason.startswith("auto: no rows pending")


def test_auto_runs_the_faster_graph_that_passed_and_fp32_when_int8_failed(bundle, tmp_path):
    # int8 alone: the pricing of fp32's rescoring is tested in test_rescoring.py
    passed = with_gate(bundle, tmp_path, True, rescoring=False)
    failed = with_gate(bundle, tmp_path, False)
    # The gate lives in the manifest, which the model version does not hash: same
    # version, so the copies share the timings cache and their already-scored rows.
    assert passed.version == failed.version == bundle.version
    cache = tmp_path / "cache"
    forge_timings(bundle, cache, 3.0)
    # auto_check_rows=0: the timing and the gate alone (the check on the text is below)
    stats, row = run(tmp_path, passed.path, cache, name="passed", auto_check_rows=0)
    assert row == ("int8", f"auto: int8 3.00x fp32 on {cpu.isa()}, passed gate")
    stats, row = run(tmp_path, failed.path, cache, name="failed")
    assert row == (
        "fp32",
        "auto: fp32, int8 failed the export gate (agrees with PyTorch on 95.0% of the test "
        "split and 92.3% of 26 check texts)",
    )
    assert stats.canary["rows"] == 0  # fp32 ran: nothing to compare


def test_a_quantized_graph_must_clearly_beat_fp32(bundle, tmp_path):
    cache = tmp_path / "cache"
    forge_timings(bundle, cache, 1.05)
    _, (variant, reason) = run(tmp_path, with_gate(bundle, tmp_path, True).path, cache)
    assert variant == "fp32" and "int8 only 1.05x fp32" in reason


def test_a_named_variant_still_runs_and_says_so(bundle, tmp_path):
    cache = tmp_path / "cache"
    _, row = run(tmp_path, bundle.path, cache, variant="int8")
    assert row == ("int8", "--variant int8")
    assert not cache.exists()  # nothing timed


def test_cli_default_is_auto(bundle, tmp_path):
    db = tmp_path / "m.duckdb"
    make_source(db, 30)
    forge_timings(bundle, tmp_path / "cache", 2.0)
    passed = with_gate(bundle, tmp_path, True, rescoring=False)  # int8 alone: 2x as timed
    args = ["score", "--db", str(db), "--table", "posts", "--id-col", "id", "--text-col", "text"]
    result = CliRunner().invoke(
        main,
        [
            *args,
            "--bundle",
            str(passed.path),
            "--device",
            "cpu",
            "--json",
            "--auto-check-rows",
            "0",
        ],
        env={"MARKETPULSE_CACHE": str(tmp_path / "cache")},
    )
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    row = con.execute("SELECT variant, variant_reason FROM runs").fetchone()
    con.close()
    assert row == ("int8", f"auto: int8 2.00x fp32 on {cpu.isa()}, passed gate")


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_pick_that_disagrees_with_fp32_on_the_text_to_score_runs_fp32(bundle, tmp_path, engine):
    """int8 passed export's gate and is 3x faster, but on this table's text its labels
    differ from fp32's (this bundle's int8, run alone, is far off): auto checks and runs fp32."""
    if engine == "ray":
        pytest.importorskip("ray", reason="Ray is an extra: pip install 'marketpulse[ray]'")
    cache = tmp_path / "cache"
    forge_timings(bundle, cache, 3.0)
    passed = with_gate(bundle, tmp_path, True, rescoring=False)
    stats, (variant, reason) = run(tmp_path, passed.path, cache, engine=engine)
    with duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True) as con:
        texts = [r[0] for r in con.execute("SELECT text FROM posts").fetchall()]
    non_blank = sum(1 for t in texts if t is not None and not is_blank(t))
    assert variant == stats.variant == "fp32"
    assert reason.startswith("auto: fp32, int8 disagreed with it on ")
    assert f"% of {non_blank} rows sampled from the rows to score (above 1%)" in reason
    assert f"; before that, auto: int8 3.00x fp32 on {cpu.isa()}, passed gate" in reason
    assert stats.rows_scored == non_blank


class AgreeingInt8(Predictor):
    """An int8 graph that agrees with fp32 everywhere: the fp32 graph under int8's name."""

    def __init__(self, bundle, variant=None, *args, **kwargs):
        super().__init__(bundle, "fp32" if variant == "int8" else variant, *args, **kwargs)
        if variant == "int8":
            self.variant = "int8"


def test_a_pick_that_agrees_with_fp32_on_the_text_keeps_its_speed(bundle, tmp_path):
    cache = tmp_path / "cache"
    forge_timings(bundle, cache, 3.0)
    passed = with_gate(bundle, tmp_path, True)
    db = tmp_path / "m.duckdb"
    make_source(db, N)
    cfg = ScoreConfig(db, "posts", "id", "text", passed.path, cache_dir=cache, where="lang = 'en'", auto_check_rows=20)  # fmt: skip
    stats = score(cfg, predictor_type=AgreeingInt8)
    assert stats.variant == "int8"
    assert stats.variant_reason == (
        f"auto: int8 3.00x fp32 on {cpu.isa()}, passed gate; disagreed with fp32 on 0.0% "
        "of 20 rows sampled from the rows to score"
    )
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT variant, variant_reason FROM runs").fetchone()
    assert row == (stats.variant, stats.variant_reason)  # what the runs table says, too


def test_the_check_samples_no_more_rows_than_the_run_scores(bundle, tmp_path):
    cache = tmp_path / "cache"
    forge_timings(bundle, cache, 3.0)
    passed = with_gate(bundle, tmp_path, True)
    db = tmp_path / "m.duckdb"
    make_source(db, N)
    cfg = ScoreConfig(db, "posts", "id", "text", passed.path, cache_dir=cache, limit=5, auto_check_rows=20)  # fmt: skip
    stats = score(cfg, predictor_type=AgreeingInt8)
    assert stats.variant_reason.endswith("of 5 rows sampled from the rows to score")
    with duckdb.connect(str(db), read_only=True) as con:  # what the runs table records
        assert con.execute("SELECT variant_reason, rows_scored FROM runs").fetchall() == [
            (stats.variant_reason, 5)
        ]


def test_the_check_samples_the_rows_still_to_score(tmp_path):
    """A hash sample of the non-blank texts that pass the filter and this model version
    has not scored: the same rows whatever order DuckDB reads in."""
    from marketpulse.runtime.source import check_source, sample_pending_texts

    db = tmp_path / "m.duckdb"
    texts = make_source(db, 300)
    con = duckdb.connect(str(db))
    source = check_source(con, "posts", "id", "text", "lang = 'en'", False)
    sample = sample_pending_texts(con, source, "scores", "v1", 1000)  # no results table yet
    english = [t for i, t in enumerate(texts) if i % 2 == 0 and t is not None and not is_blank(t)]
    assert sorted(sample) == sorted(english)
    con.execute("CREATE TABLE scores AS SELECT id, 'v1' AS model_version FROM posts WHERE id < 200")
    con.execute("INSERT INTO scores SELECT id, 'v0' FROM posts")  # another version's rows
    pending = sample_pending_texts(con, source, "scores", "v1", 1000)
    assert sorted(pending) == sorted(t for t in english if int(t.split()[1].rstrip(":")) >= 200)
    first = sample_pending_texts(con, source, "scores", "v1", 10)
    assert len(first) == 10 and set(first) <= set(pending)
    assert sample_pending_texts(con, source, "scores", "v1", 10) == first
    con.close()


def test_gate_results_infers_verdicts_for_older_bundles():
    manifest = {
        "variants": {"fp32": {}, "int8": {}, "fp16": {}},
        "checks": {
            "texts": "test_split.parquet (150 rows)",
            "gate": {"min_agreement": 0.99, "max_f1_drop": 0.01, "accuracy_drops": ["..."]},
            "variants": {
                "fp32": {"agreement": 0.98, "rows": 150},
                "int8": {"agreement": 0.97, "f1_drop": 0.0, "rows": 150},
                "fp16": {"skipped": "no CUDA provider"},
            },
        },
    }
    gate = gate_results(manifest)
    assert gate["fp32"].passed and gate["fp16"].passed  # reference; published unchecked
    assert not gate["int8"].passed and gate["int8"].test_agreement == 0.97
    assert not gate["int8"].recorded
    manifest["checks"]["variants"]["int8"]["agreement"] = 0.995
    assert gate_results(manifest)["int8"].passed
    manifest["checks"]["variants"]["int8"]["f1_drop"] = 0.02
    assert not gate_results(manifest)["int8"].passed
    # the recorded field wins; a graph it does not list did not pass
    manifest["checks"]["gate"]["variants"] = {"int8": {"passed": True}}
    gate = gate_results(manifest)
    assert gate["int8"].passed and gate["fp32"].passed and not gate["fp16"].passed


def test_the_preference_skips_a_graph_that_failed_the_gate(bundle, tmp_path):
    """Without --variant auto (explain, evaluate, a CUDA fallback) the preference rules
    apply; they too never pick a failed graph on their own, and a named one still runs."""
    from marketpulse.inference.predictor import choose_placement

    failed = with_gate(bundle, tmp_path, int8_passed=False)
    placement = choose_placement(failed, "cpu", None)
    assert placement.variant == "fp32" and "int8 failed export's gate" in placement.reason
    assert choose_placement(failed, "cpu", "int8").variant == "int8"
    passed = with_gate(bundle, tmp_path, int8_passed=True)
    assert choose_placement(passed, "cpu", None).variant == "int8"


def test_a_gate_measured_on_another_isa_is_named(bundle, tmp_path, monkeypatch):
    """int8 kernels differ by ISA (VNNI vs AVX2): the reason says where the gate ran."""
    from marketpulse import cpu

    passed = with_gate(bundle, tmp_path, int8_passed=True)
    exported_on = passed.manifest["variants"]["int8"]["quantization"]["exported_on"]
    assert exported_on == cpu.isa()
    rates = {"fp32": 100.0, "int8": 250.0}
    same = autovariant.pick(passed, ["fp32", "int8"], rates)
    monkeypatch.setattr(cpu, "isa", lambda: "generic")
    other = autovariant.pick(passed, ["fp32", "int8"], rates)
    assert same[0] == other[0] == "int8"
    if exported_on != "generic":
        assert "checks it on this CPU" not in same[1]
        assert other[1] == (
            f"auto: int8 2.50x fp32 on generic, passed gate on {exported_on} "
            "(the run's canary checks it on this CPU)"
        )


def test_the_gate_is_placed_where_it_ran_not_where_int8_was_aimed(bundle, tmp_path, monkeypatch):
    """`export --int8-isa avx2` on a VNNI machine: the graph is for AVX2, but its gate ran
    VNNI kernels, and scoring on AVX2 says so."""
    from marketpulse import cpu

    passed = with_gate(bundle, tmp_path, int8_passed=True)
    quantization = passed.manifest["variants"]["int8"]["quantization"]
    quantization.update(cpu_isa="avx2", exported_on="avx512_vnni")
    monkeypatch.setattr(cpu, "isa", lambda: "avx2")
    _, reason = autovariant.pick(passed, ["fp32", "int8"], {"fp32": 100.0, "int8": 130.0})
    assert reason == (
        "auto: int8 1.30x fp32 on avx2, passed gate on avx512_vnni "
        "(the run's canary checks it on this CPU)"
    )
    del quantization["exported_on"]  # a bundle from before --int8-isa: cpu_isa is where it ran
    _, reason = autovariant.pick(passed, ["fp32", "int8"], {"fp32": 100.0, "int8": 130.0})
    assert reason == "auto: int8 1.30x fp32 on avx2, passed gate"
