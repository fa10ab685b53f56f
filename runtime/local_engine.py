"""`score(ScoreConfig) -> RunStats`: score a DuckDB table on this machine, resumably.

Read top to bottom:
1. `checked_run` (runs.py) takes the run lock, checks the input and counts the pending
   rows on a read-only connection; `--variant auto` picks the graph (autovariant.py:
   timed once per model and machine, then cached); then the Predictor loads.
2. `run.record` opens the run row; pending rows (not yet scored by this model version)
   stream through three stages that overlap, because DuckDB, the Rust tokenizer and
   ONNX Runtime all release the GIL:
       reader thread:  a range of pending rows (one short read-only session each)
                       -> `tokenize_window`, TOKENIZING windows at once, each
                       cut into one slice per thread (batching.TextEncoder)
       main thread:    `infer_window`: length-sorted token-budget batches -> ONNX
                       Runtime (on CPU, one batch per core at a time) -> softmax
       writer thread:  `results_table`, then `run.add`: committed in one transaction
                       every `commit_seconds`, on a connection open only for it
   Queues between stages are short, so at most a few windows are in memory.
3. The table is read in segments of SEGMENT_ROWIDS rowids; at the end of each the
   writer checkpoints, so each segment's results make one whole row group. A view
   has no rowid: its pending rows are staged to Parquet first (one read session), in
   a folder beside the results file that the run marks as its own; each run first
   removes the folders of runs killed before they could (database.py).
4. The canary (canary.py): each inferred window offers its rows to a seeded sample;
   when the table is done the sample is rescored by the fp32 graph and the share whose
   label differs goes into the run's row.
5. SIGTERM / SIGINT (`run.stopping`): the reader stops, the window in hand is
   inferred and committed, and `run.record` marks the run interrupted (no canary).

No DuckDB connection stays open between sessions, so other processes can read the
file throughout (database.py). This module owns the threads, queues and segments;
what a window becomes is in windows.py, what a run records in runs.py, how the
table is read in source.py.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from marketpulse import variants as registry
from marketpulse.cpu import available_cores
from marketpulse.errors import first_line
from marketpulse.inference.predictor import Predictor
from marketpulse.runtime import autovariant
from marketpulse.runtime import canary as run_canary
from marketpulse.runtime.runs import Run, RunStats, ScoreConfig, checked_run
from marketpulse.runtime.source import (
    arrow_table,
    count_rows,
    export_pending,
    pending_query,
    pending_range,
    reading,
    rowid_span,
)
from marketpulse.runtime.windows import (
    infer_window,
    results_table,
    tokenize_window,
)

# Rowids per read query (a few windows).
READ_ROWIDS = 32_768
# Rowids per segment: the writer checkpoints at the end of each, and a checkpoint ends
# the row group being appended to, so a segment is one row group of results (DuckDB's
# default size). Commits inside a segment stay in the write-ahead log. With shorter
# row groups, later checkpoints merged them in memory, three at a time: peak RSS grew
# by up to ~56 MiB with the table (to ~400k rows). Full row groups are never merged.
SEGMENT_ROWIDS = 122_880
# Rows per Parquet file when a view's pending rows are staged.
STAGE_ROWS = 1_000_000
# Windows tokenized at once: while one is in the tokenizer's thread pool, the other's
# Python work (texts in, ids out, which holds the GIL) runs beside it.
TOKENIZING = 2
# Passes after the first when rows are still pending at its end: the rowid ranges are
# planned once, and another process's delete plus a checkpoint can renumber rowids.
EXTRA_PASSES = 2


def score(cfg: ScoreConfig, predictor_type: type[Predictor] = Predictor) -> RunStats:
    """Score every pending row of `cfg.table`; return what the run did.

    `predictor_type` is for measuring: `make bench`'s host-ceiling row passes a
    Predictor whose `run` returns zero logits, so the run costs the host work alone.
    """
    with checked_run(cfg) as run:
        choice = autovariant.choose(
            run.bundle, cfg.device, cfg.variant, cfg.cache_dir, measure=run.pending > 0
        )
        threads, margin = cfg.threads or available_cores(), cfg.rescore_margin
        choice = autovariant.checked_on_text(
            run,
            choice,
            lambda variant: predictor_type(
                run.bundle, variant, "cpu", threads, rescore_margin=margin
            ),
        )
        predictor = predictor_type(
            run.bundle,
            choice.variant,
            cfg.device,
            threads,
            variant_reason=choice.reason,
            rescore_margin=margin,
        )
        with run.record(
            provider=predictor.provider,
            variant=predictor.variant,
            reason=predictor.reason,
            engine="local",
            variant_reason=predictor.variant_reason,
            rescore_margin=predictor.rescore_margin,
        ) as stats:
            _remove_stale_staging(run)
            if choice.detail:
                run.progress.log(choice.detail)
            run.progress.log(predictor.describe())
            if threads > available_cores():
                run.progress.log(
                    f"warning: --threads {threads} is more than the {available_cores()} "
                    "core(s) this process may use; oversubscribed cores score slower (leave "
                    "--threads out to use one per core)"
                )
            compared = predictor.variant != registry.REFERENCE  # fp32 has nothing to compare
            canary = run_canary.Canary(cfg.canary_rows if compared else 0)
            _stream(run, predictor, canary)
            if not run.stopping.is_set():
                started = time.perf_counter()
                run.canary = _finish_canary(run, predictor, canary, predictor_type)
                run.canary.seconds = time.perf_counter() - started
        return stats


def _remove_stale_staging(run: Run) -> None:
    """Staging folders of killed runs (a view's rows, raw texts) go before this run stages."""
    removed, kept = run.db.remove_stale_staging()
    folder = run.db.target.parent
    if removed:
        run.progress.log(
            f"removed {removed} stale staging folder(s) of interrupted runs in {folder}"
        )
    if kept:
        run.progress.log(
            f"kept {kept} staging folder(s) of an older marketpulse in {folder} "
            "(.marketpulse-stage-*): other databases there may be scoring; remove them by hand "
            "once no `marketpulse score` runs on a database in that folder"
        )


def _finish_canary(
    run: Run, predictor: Predictor, canary: run_canary.Canary, predictor_type: type[Predictor]
) -> run_canary.CanaryResult:
    """Rescore the canary sample with the fp32 graph (the same Predictor type, on CPU)."""
    if predictor.variant == registry.REFERENCE:
        return run_canary.CanaryResult(rows=0, note=run_canary.REFERENCE_RAN)
    if not run.cfg.canary_rows:
        return run_canary.CanaryResult(rows=0, note=run_canary.DISABLED)
    if not canary.ids:
        return run_canary.CanaryResult(rows=0, note="no rows scored in this run")
    try:
        reference = predictor_type(run.bundle, registry.REFERENCE, "cpu", predictor.threads)
        return canary.finish(reference, run.cfg.batch_tokens)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types; any of them
        # Every row is committed by now: a check that cannot run must not fail the run.
        first = first_line(exc)
        return run_canary.CanaryResult(rows=None, note=f"canary not measured: {first}")


class _Stop(Exception):
    """Raised inside a stage thread when another stage failed."""


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


def _segments(run: Run, stage_dir):
    """Per segment, a list of reads: ("range", sql maker) for a table, ("parquet", path)
    for a view, whose pending rows are staged in `stage_dir()`."""
    source, cfg, version = run.source, run.cfg, run.bundle.version
    with run.db.read() as con:
        span = rowid_span(con, source)
        if span is None:  # a view: staged whole, then read from Parquet, one segment
            sql, params = pending_query(source, cfg.results_table, version, cfg.limit)
            shards = export_pending(con, sql, params, stage_dir(), STAGE_ROWS, source)
            return [[("parquet", path) for path in shards]]
    segments = []
    for seg in range(0, span, SEGMENT_ROWIDS):
        reads = []
        for lo in range(seg, min(seg + SEGMENT_ROWIDS, span), READ_ROWIDS):
            # Never past the segment: those rows belong to the next row group.
            hi = min(lo + READ_ROWIDS, seg + SEGMENT_ROWIDS, span)
            reads.append(
                (
                    "range",
                    lambda c, limit, lo=lo, hi=hi: pending_range(
                        c, source, cfg.results_table, version, lo, hi, limit
                    ),
                )
            )
        segments.append(reads)
    return segments


def _stream(run: Run, predictor: Predictor, canary: run_canary.Canary) -> None:
    """Run the pipeline segment by segment; commit and checkpoint at each segment's end."""
    staged: list[Path] = []
    cleanup = ExitStack()

    def stage_dir() -> Path:
        """Beside the results file, made only when a view's rows are staged."""
        if not staged:
            staged.append(cleanup.enter_context(run.db.staging_dir()))
        return staged[0]

    with cleanup:
        remaining = [run.cfg.limit]  # rows the reader may still emit (None: no limit)
        for extra in range(EXTRA_PASSES + 1):
            for reads in _segments(run, stage_dir):
                _segment(run, reads, remaining, predictor, canary)
                run.flush(checkpoint=True)
                if remaining[0] == 0 or run.stopping.is_set():
                    return
            if remaining[0] is not None or extra == EXTRA_PASSES:
                return
            left = _still_pending(run)
            if not left:
                return
            run.progress.log(
                f"{left:,} row(s) still pending after the pass (added meanwhile, or moved by "
                "another process's delete and checkpoint); another pass"
            )


def _still_pending(run: Run) -> int:
    """Pending rows this run did not try: rows it counted failed stay for the next run."""
    with run.db.read() as con, reading(run.cfg.table, run.cfg.where):
        matching, done = count_rows(con, run.source, run.cfg.results_table, run.bundle.version)
    return max(0, matching - done - run.stats.rows_failed)


def _read(run: Run, kind: str, what, remaining: list):
    """One read's pending rows as Arrow batches of at most chunk_rows rows."""
    chunk = run.cfg.chunk_rows
    if kind == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(what) as shard:
            yield from shard.iter_batches(batch_size=chunk)
        return
    # a short query, fetched whole: the session ends at once
    with run.db.read() as con, reading(run.cfg.table, run.cfg.where):
        query = what(con, remaining[0])
        table = None if query is None else arrow_table(con.sql(query[0], params=query[1]))
    if table is not None:
        yield from table.to_batches(max_chunksize=chunk)


def _segment(
    run: Run, reads, remaining: list, predictor: Predictor, canary: run_canary.Canary
) -> None:
    cfg = run.cfg
    stop = threading.Event()
    errors: list[BaseException] = []
    to_infer: queue.Queue = queue.Queue(maxsize=2)
    to_write: queue.Queue = queue.Queue(maxsize=2)

    def batches():
        for kind, what in reads:
            if remaining[0] == 0 or run.stopping.is_set():
                return
            yield from _read(run, kind, what, remaining)

    def read() -> None:
        in_flight: deque = deque()  # windows being tokenized, in read order
        try:
            with ThreadPoolExecutor(TOKENIZING, thread_name_prefix="score-tokenize") as pool:
                for batch in batches():
                    if run.stopping.is_set():
                        break
                    if remaining[0] is not None:
                        batch = batch.slice(0, remaining[0])
                        remaining[0] -= batch.num_rows
                    if not batch.num_rows:
                        continue
                    cols = (batch.column(0), batch.column(1))
                    in_flight.append(pool.submit(tokenize_window, *cols, predictor))
                    if len(in_flight) == TOKENIZING:
                        _put(to_infer, in_flight.popleft().result(), stop)
                while in_flight:  # the rest, in read order
                    _put(to_infer, in_flight.popleft().result(), stop)
            _put(to_infer, None, stop)
        except _Stop:
            pass
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    def write() -> None:
        try:
            while (window := _get(to_write, stop)) is not None:
                rows, counts = results_table(window, predictor, run.bundle.version, run.p_cols)
                run.add(rows, counts, window.skipped_reasons())
        except _Stop:
            pass
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=f, name=f"score-{f.__name__}") for f in (read, write)]
    for t in threads:
        t.start()
    try:
        while (window := _get(to_infer, stop)) is not None:
            infer_window(window, predictor, cfg.batch_tokens)
            canary.add(window)
            _put(to_write, window, stop)
            if run.stopping.is_set():  # SIGTERM / SIGINT: this window is the last
                break
        _put(to_write, None, stop)
        threads[1].join()
    except _Stop:
        pass
    except BaseException as exc:
        errors.append(exc)
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
