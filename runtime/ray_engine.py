"""`score_with_ray(cfg, ...) -> RunStats`: the score command's Ray Data engine.

Same bundle, same batching, same results: only where the model runs changes.

Read top to bottom:
1. The run is set up and recorded by the same code as the local engine's
   (`runs.checked_run`, `Run.record`): every input check runs, and the results tables
   are created or checked and the run row opened, before Ray starts.
2. The pending rows (the local engine's anti-join query: rows this model version has
   not scored) are exported by the driver to Parquet shards in a staging directory.
3. Every node that can host a scorer is checked to read the staged shards and the
   bundle as the driver does (`ray_cluster.check_nodes_read`). Then tasks read the
   shards (`read_staged`) and `map_batches(Scorer, ...)` scores them on a fixed pool of
   actors. `Scorer` loads the bundle once per actor and scores each batch with the
   local engine's own window code (`Predictor`, token-budget batches, the scores-row
   builder), so a row gets the same label and probabilities on either engine.
4. The driver streams the scored batches back and hands each to `Run.add`, as the
   local engine does: one transaction per commit, scores rows plus run counters, on a
   connection open only for the commit, so readers can open the file meanwhile.
   Results come back through Ray's object store rather than through Parquet files
   written by the workers, so the driver needs no storage shared with the workers
   for them, and a crash leaves whole committed batches: a rerun skips those ids.
   A run that gets no batch back for `timeout_s` (--ray-timeout) fails with one line
   (`ray_cluster.watched`); Ray Data's own no-progress limit is set to the same bound.

Ray is an optional extra (`pip install 'marketpulse[ray]'`); this module imports it
only inside functions, so `marketpulse --help` and the local engine never load it.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from marketpulse import variants as registry
from marketpulse.bundle import MANIFEST, load_bundle
from marketpulse.errors import MarketpulseError
from marketpulse.owned_folders import owned_folder, remove_dead_folders
from marketpulse.results_schema import probability_columns
from marketpulse.runtime import autovariant
from marketpulse.runtime.canary import RAY as RAY_CANARY
from marketpulse.runtime.canary import CanaryResult
from marketpulse.runtime.ray_cluster import (
    CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    Stalled,
    check_nodes_read,
    check_reachable,
    connect,
    limit_stalls,
    plan_workers,
    stall_detail,
    watched,
)
from marketpulse.runtime.runs import Run, RunStats, ScoreConfig, checked_run
from marketpulse.runtime.source import export_pending, pending_query

# The pending rows' Parquet shards, in a folder of --stage-dir (or the temp dir) holding
# an `owner.lock` its run keeps flocked: a killed run's folder is removed by a later run.
RAY_STAGE_PREFIX = "marketpulse-ray-"
RAY_RUN_ID = r"[0-9a-f]{1,32}-"  # what follows the prefix, before mkdtemp's part: a run id
RAY_MAKING_PREFIX = ".marketpulse-ray-making-"  # not under RAY_STAGE_PREFIX: not swept

INSTALL_HINT = "pip install 'marketpulse[ray]'"
FAILED = "_failed"  # marks rows ONNX Runtime could not score; never written to the table
COPIED = "_copied"  # marks rows scored as a copy of the same text's result (counted only)
RESCORED = "_rescored"  # marks rows a quantized graph hesitated on, rescored by fp32 (counted)
# Shard sizes: at least SHARDS_PER_WORKER per actor so reads spread over the cluster,
# at most SHARD_CHUNKS chunks each. (Commits are per chunk either way: see read_staged.)
SHARDS_PER_WORKER = 4
SHARD_CHUNKS = 16
# Seconds past --ray-timeout before the driver gives up on its own: Ray Data's own
# no-progress check (which also stops the actors) gets the first word.
STALL_GRACE_S = 15.0
_REMOTE_ERROR = re.compile(r"^marketpulse\.errors\.MarketpulseError: (.+)$", re.MULTILINE)


def ray_available() -> bool:
    """True when `--engine ray` can run here (the bench uses it to decide on a Ray row)."""
    try:
        require_ray()
    except MarketpulseError:
        return False
    return True


def require_ray():
    """Import Ray Data or raise the one-line error that names the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MarketpulseError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); install it with "
            f"{INSTALL_HINT}, or use --engine local"
        ) from exc
    return ray


def ray_device(device: str, gpus_per_worker: float) -> str:
    """The device every Scorer uses: CUDA exactly when workers get GPUs."""
    if gpus_per_worker < 0:
        raise MarketpulseError(f"--gpus-per-worker must be 0 or more, got {gpus_per_worker}")
    if gpus_per_worker > 0:
        if device == "cpu":
            raise MarketpulseError(
                "--device cpu with --gpus-per-worker > 0 reserves GPUs that nothing uses; "
                "drop one of the two flags"
            )
        return "cuda"
    if device == "cuda":
        raise MarketpulseError(
            "--device cuda with --engine ray needs GPUs for the workers; pass "
            "--gpus-per-worker 1 (or a fraction such as 0.5 to share a GPU)"
        )
    return "cpu"


def planned_placement(bundle, device: str, variant: str | None) -> tuple[str, str]:
    """(provider, variant) the Scorers will run, decided on the driver for the run record.

    The driver may have no GPU, so CUDA is planned without probing for a CUDA provider
    here (the actors do that), by the same rules the Predictor uses.
    """
    from marketpulse.inference.predictor import choose_placement

    placement = choose_placement(bundle, device, variant, probe=False)
    return placement.provider, placement.variant


def planned_variant(bundle, device: str, cfg: ScoreConfig, pending: int):
    """`--variant auto` for the workers: timed on the driver's CPU (autovariant.py), not
    at all when no row is pending."""
    choice = autovariant.choose(
        bundle, device, cfg.variant, cfg.cache_dir, probe=False, measure=pending > 0
    )
    if cfg.variant == registry.AUTO and device == "cpu":
        return replace(choice, reason=f"{choice.reason} (timed on the driver's CPU)")
    return choice


def _cpu_predictor(bundle, margin: float | None, variant: str):
    from marketpulse.inference.predictor import Predictor

    return Predictor(bundle, variant, "cpu", threads=1, rescore_margin=margin)


class Scorer:
    """The map_batches callable: one bundle and ONNX session per actor, reused for every batch.

    Takes a pyarrow batch (id, text) and returns the scores rows the local engine would
    write for it, plus the ids of rows ONNX Runtime failed on (marked in `_failed`).
    """

    def __init__(
        self,
        bundle_dir: str,
        model_version: str,
        variant: str | None,
        device: str,
        threads: int,
        batch_tokens: int,
        rescore_margin: float | None = None,
    ):
        from marketpulse.inference.predictor import Predictor

        bundle = load_bundle(Path(bundle_dir))
        if bundle.version != model_version:
            raise MarketpulseError(
                f"the bundle at {bundle_dir} on this Ray node is model {bundle.version}, the "
                f"driver's is {model_version}; give every node the same bundle (a shared path)"
            )
        self.predictor = Predictor(bundle, variant, device, threads, rescore_margin=rescore_margin)
        self.version = model_version
        self.batch_tokens = batch_tokens
        self.p_cols = probability_columns(bundle.labels)

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        from marketpulse.runtime.windows import infer_window, results_table, tokenize_window

        ids = batch.column("id").combine_chunks()
        window = tokenize_window(ids, batch.column("text"), self.predictor)
        infer_window(window, self.predictor, self.batch_tokens)
        table, _ = results_table(window, self.predictor, self.version, self.p_cols)
        failed = window.valid[window.failed]
        copied = np.zeros(len(window.reasons), dtype=bool)
        copied[window.valid] = window.copied()
        rescored = np.zeros(len(window.reasons), dtype=bool)
        rescored[window.valid] = window.rescored & ~window.failed
        table = table.append_column(FAILED, pa.array(np.zeros(table.num_rows, dtype=bool)))
        table = table.append_column(COPIED, pa.array(np.delete(copied, failed)))
        table = table.append_column(RESCORED, pa.array(np.delete(rescored, failed)))
        if len(failed):
            lost = {
                name: pa.nulls(len(failed), table.schema.field(name).type)
                for name in table.column_names
            }
            lost["id"] = ids.take(pa.array(failed))
            lost[FAILED] = pa.array(np.ones(len(failed), dtype=bool))
            lost[COPIED] = pa.array(np.zeros(len(failed), dtype=bool))
            lost[RESCORED] = pa.array(np.zeros(len(failed), dtype=bool))
            table = pa.concat_tables([table, pa.table(lost, schema=table.schema)])
        return table


def split_scored(table) -> tuple[object, dict[str, int], dict[str, int]]:
    """A Scorer batch -> (rows to write, counters for write_chunk, skipped reasons)."""
    import pyarrow.compute as pc

    failed = table.column(FAILED)
    rows = table.filter(pc.invert(failed)).drop_columns([FAILED, COPIED, RESCORED])
    scored = pc.is_valid(rows.column("label"))
    counts = {
        "scored": int(pc.sum(scored).as_py() or 0),
        "skipped": int(pc.sum(pc.is_valid(rows.column("reason"))).as_py() or 0),
        "failed": int(pc.sum(failed).as_py() or 0),
        "truncated": int(pc.sum(pc.and_(scored, rows.column("truncated"))).as_py() or 0),
        "duplicates": int(pc.sum(table.column(COPIED)).as_py() or 0),
        "rescored": int(pc.sum(table.column(RESCORED)).as_py() or 0),
    }
    reasons = {}
    for item in pc.value_counts(rows.column("reason").drop_null()).to_pylist():
        reasons[item["values"]] = int(item["counts"])
    return rows, counts, reasons


def read_shard(batch):
    """Ray Data map function: a batch of staged shard paths -> their rows (on a worker)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(path) for path in batch.column("path").to_pylist()])


def read_staged(ray, shards: list[str], rows: int):
    """The staged shards as a dataset of blocks of at most `rows` rows, streaming.

    Each shard is read by a plain task on a worker, not by `ray.data.read_parquet`:
    Ray 2.5x's Parquet reader starts 32 FooterReader actors (separate processes) per
    read to list the files, and its older reader lists them in a task the driver waits
    on before the run starts. On a 2-core machine with other work the first is a
    start-up storm that held back the first scored batch for minutes, and the second
    waits outside any progress check when the cluster has no free CPU.

    The blocks are then cut to `rows` rows (no all-to-all barrier): a map task returns
    its block's results in one piece when it ends, so without this a whole shard would
    come back, and be committed, as one chunk. Older Ray versions lack the argument;
    there each shard is one block, so commits are per shard.
    """
    paths = ray.data.from_items([{"path": p} for p in shards], override_num_blocks=len(shards))
    dataset = paths.map_batches(read_shard, batch_size=1, batch_format="pyarrow")
    try:
        return dataset.repartition(target_num_rows_per_block=rows)
    except TypeError:
        return dataset


def _user_error(exc: BaseException) -> MarketpulseError | None:
    """The MarketpulseError a Scorer raised, however Ray wrapped it on the way back.

    Ray Data re-raises a worker's exception as a RayTaskError/UserCodeException (or an
    ActorDiedError when the constructor failed) whose text embeds the remote traceback,
    so the original message is recovered from that text when the object itself is gone.
    """
    seen = set()
    stack = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, MarketpulseError):
            return MarketpulseError(str(err))
        found = _REMOTE_ERROR.findall(str(err))
        if found:
            return MarketpulseError(found[-1].strip())
        stack += [getattr(err, "cause", None), err.__cause__, err.__context__]
    return None


def score_with_ray(
    cfg: ScoreConfig,
    ray_address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0,
    stage_dir: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> RunStats:
    """Score every pending row of `cfg.table` on a Ray cluster; return what the run did.

    `ray_address`: None starts a new local cluster (or uses the one this process already
    joined), "auto" joins the cluster `ray start` made this machine a node of, and
    "HEAD_IP:6379" names that cluster's head. `stage_dir` must be readable by every Ray node (a
    shared filesystem) when the cluster spans several machines; every node is checked
    before any actor starts. `timeout_s`: a run that gets no scored batch back for this
    long (start-up included) fails with a one-line error instead of waiting forever.
    """

    if ray_address is not None and "://" in ray_address:  # Ray's own test for a client
        raise MarketpulseError(
            f"--ray-address {ray_address}: Ray Client (ray://) is not supported; run the "
            "command on a node of the cluster with --ray-address auto (or HEAD_IP:6379)"
        )
    ray = require_ray()
    device = ray_device(cfg.device, gpus_per_worker)
    if timeout_s <= 0:
        raise MarketpulseError(f"--ray-timeout must be above 0 seconds, got {timeout_s:g}")
    if stage_dir is not None and not Path(stage_dir).is_dir():
        raise MarketpulseError(
            f"--stage-dir {stage_dir} is not a directory; create it (on a filesystem every "
            "Ray node mounts) or leave the flag out to stage in the system temp dir"
        )
    threads = 1 if device == "cuda" else (cfg.threads or 1)
    with checked_run(cfg) as run:
        choice = planned_variant(run.bundle, device, cfg, run.pending)
        # on the driver, as the timing is (on CUDA auto picks no quantized graph: a no-op)
        choice = autovariant.checked_on_text(
            run, choice, partial(_cpu_predictor, run.bundle, cfg.rescore_margin)
        )
        provider, variant = planned_placement(run.bundle, device, choice.variant)
        from marketpulse.inference.predictor import rescore_margin_for

        # decided here, so every Scorer uses this number whatever its node's manifest says
        margin = rescore_margin_for(run.bundle, provider, variant, cfg.rescore_margin)
        # before the run row: a cluster nobody answers for leaves no file behind
        check_reachable(ray_address, min(CONNECT_TIMEOUT_S, timeout_s))
        with run.record(
            provider=provider,
            variant=variant,
            reason=f"--engine ray, {'GPU' if device == 'cuda' else 'CPU'} workers",
            engine="ray",
            variant_reason=choice.reason,
            rescore_margin=margin,
        ) as stats:
            if choice.detail:
                run.progress.log(choice.detail)
            run.canary = CanaryResult(note=RAY_CANARY)
            if stats.rows_pending:
                cluster = {
                    "address": ray_address,
                    "workers": workers,
                    "gpus_per_worker": gpus_per_worker,
                    "stage_dir": stage_dir,
                    "timeout_s": timeout_s,
                }
                try:
                    _run(ray, run, device, threads, cluster)
                except Exception as exc:
                    # Ray wraps a worker's MarketpulseError; surface its one line.
                    user = _user_error(exc)
                    if user is None:
                        raise
                    raise user from exc
        return stats


def _run(ray, run: Run, device: str, threads: int, cluster: dict):
    """Export, score on the actor pool, commit each returned batch; always clean up."""
    stats, progress = run.stats, run.progress
    t_start = time.perf_counter()
    started_ray = connect(ray, cluster["address"], progress.log)
    t_ray = time.perf_counter()
    try:
        # Pending rows are raw texts: a killed run's folder goes at the next run here
        parent = Path(cluster["stage_dir"] or tempfile.gettempdir())
        removed, _ = remove_dead_folders(parent, RAY_STAGE_PREFIX, between=RAY_RUN_ID)
        if removed:
            progress.log(f"removed {removed} stale Ray staging folder(s) of interrupted runs")
        prefix = f"{RAY_STAGE_PREFIX}{stats.run_id}-"
        with owned_folder(parent, prefix, RAY_MAKING_PREFIX) as staging:
            _stage_and_score(ray, run, device, threads, cluster, staging, t_start, t_ray)
    finally:
        if started_ray:
            ray.shutdown()


def _stage_and_score(ray, run: Run, device, threads, cluster, staging, t_start, t_ray):
    """Stage the pending rows in `staging`, score them on the actor pool, commit."""
    cfg, stats, progress = run.cfg, run.stats, run.progress
    gpus_per_worker = cluster["gpus_per_worker"]
    # sizes the shards; the pool is sized again below on the nodes that answer the check
    pool = plan_workers(ray.cluster_resources(), cluster["workers"], gpus_per_worker, threads)
    per_worker = -(-stats.rows_pending // (SHARDS_PER_WORKER * pool))
    shard_rows = max(cfg.chunk_rows, min(per_worker, SHARD_CHUNKS * cfg.chunk_rows))
    sql, params = pending_query(run.source, cfg.results_table, stats.model_version, cfg.limit)
    with run.db.read() as con:
        shards = export_pending(con, sql, params, staging, shard_rows, run.source)
    bundle_dir = Path(run.bundle.path).resolve()
    live = check_nodes_read(
        ray,
        {"--stage-dir": staging, "--bundle": bundle_dir / MANIFEST},
        gpus_per_worker,
        cluster["timeout_s"],
        progress.log,
    )
    # A node that died since the cluster was asked is gone: no actor may wait for it.
    pool = plan_workers(live, cluster["workers"], gpus_per_worker, threads)
    progress.log(
        f"Ray ready in {t_ray - t_start:.1f}s; exported {stats.rows_pending:,} pending rows "
        f"to {len(shards)} Parquet shard(s) in {time.perf_counter() - t_ray:.1f}s; "
        f"scoring on {pool} Ray worker(s), {stats.provider} {stats.variant}"
        + (f", {threads} thread(s) each" if device == "cpu" else "")
    )
    limit_stalls(ray, cluster["timeout_s"])  # before the dataset copies the context
    dataset = read_staged(ray, shards, cfg.chunk_rows)
    dataset = dataset.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "bundle_dir": str(bundle_dir),
            "model_version": stats.model_version,
            "variant": stats.variant,
            "device": device,
            "threads": threads,
            "batch_tokens": cfg.batch_tokens,
            "rescore_margin": stats.rescore_margin,  # the driver's, on every node
        },
        batch_size=cfg.chunk_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_cpus=threads if device == "cpu" else 1,
        num_gpus=gpus_per_worker if device == "cuda" else None,
    )
    t_submit, t_first, first_rows = time.perf_counter(), None, 0
    batches = watched(
        lambda: dataset.iter_batches(batch_format="pyarrow", batch_size=None),
        cluster["timeout_s"],
        run.stopping,  # SIGTERM / SIGINT: commit what came back, stop
        lambda: stall_detail(ray, progress.done, stats.rows_pending),
        grace_s=STALL_GRACE_S,
    )
    try:
        for batch in batches:
            if t_first is None:
                t_first, first_rows = time.perf_counter(), batch.num_rows
            run.add(*split_scored(batch))
    except Stalled:
        run.flush()  # keep what did come back: a rerun skips those ids
        raise
    finally:
        batches.close()  # also on a stall: the feeding thread lets go of Ray Data
    run.flush(checkpoint=True)
    if t_first is not None:
        # Start-up (actors loading the bundle) vs steady state, so the overhead is visible.
        after, rest = time.perf_counter() - t_first, progress.done - first_rows
        rate = f", then {rest / after:,.0f} rows/s" if rest and after > 0 else ""
        progress.log(f"Ray: first results {t_first - t_submit:.1f}s after submitting{rate}")
