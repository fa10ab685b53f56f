"""`score(ScoreConfig) -> RunStats`: score a DuckDB table on this machine, resumably.

Read top to bottom:
1. `checked_run` (runs.py) checks the input and counts the pending rows; then the
   connection is reopened to drop what the checks cached, and the Predictor loads.
2. `run.record` opens the run row; pending rows (not yet scored by this model version)
   stream through three stages that overlap, because DuckDB, the Rust tokenizer and
   ONNX Runtime all release the GIL:
       reader thread:  DuckDB record batch -> `tokenize_window`
       main thread:    `infer_window`: length-sorted token-budget batches -> ONNX
                       Runtime (on CPU, one batch per core at a time) -> softmax
       writer thread:  `results_table`, then `run.commit`: one transaction per window
   Queues between stages are short, so at most a few windows are in memory.
3. The table is read in segments of SEGMENT_ROWIDS rowids, each on a fresh DuckDB
   connection, so memory does not grow with the table.

This module owns the threads, queues and segments; what a window becomes is in
windows.py, what a run records in runs.py, how the table is read in source.py.
"""

from __future__ import annotations

import queue
import threading

from marketpulse.inference.predictor import Predictor, available_cores
from marketpulse.runtime.runs import Run, RunStats, ScoreConfig, checked_run
from marketpulse.runtime.source import (
    arrow_table,
    pending_query,
    pending_range,
    record_batches,
    rowid_span,
)
from marketpulse.runtime.windows import (
    infer_window,
    results_table,
    set_tokenizer_threads,
    tokenize_window,
)

# Rowids per read query (a few windows).
READ_ROWIDS = 32_768
# Rowids per DuckDB session: the connection is reopened between segments, which drops
# DuckDB's page cache, so peak memory depends on the segment size and not on the table
# size. A segment is also one row group of results (DuckDB's default size): closing the
# connection checkpoints, and a checkpoint ends the row group being appended to. With
# 32,768-rowid segments every segment left a short row group, and later checkpoints
# merged them in memory, three at a time: peak RSS grew by up to ~56 MiB with the table
# (to ~400k rows). Full row groups are never merged.
SEGMENT_ROWIDS = 122_880


def score(cfg: ScoreConfig) -> RunStats:
    """Score every pending row of `cfg.table`; return what the run did."""
    with checked_run(cfg) as run:
        # The checks hashed every id and cached pages of the table: drop all that with
        # the connection before the model loads, so peak memory does not grow with it.
        run.reconnect()
        predictor = Predictor(run.bundle, cfg.variant, cfg.device, cfg.threads or available_cores())
        set_tokenizer_threads(predictor.device)
        with run.record(
            provider=predictor.provider,
            variant=predictor.variant,
            reason=predictor.reason,
            engine="local",
        ) as stats:
            run.progress.log(predictor.describe())
            _stream(run, predictor)
        return stats


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


def _reads(run: Run):
    """Per segment, a list of (kind, sql maker) for the reader: rowid ranges, or one query."""
    source, cfg, version = run.source, run.cfg, run.bundle.version
    span = rowid_span(run.con, source)
    if span is None:  # a view: one streaming query, one segment
        return [
            [("stream", lambda c, limit: pending_query(source, cfg.results_table, version, limit))]
        ]
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


def _stream(run: Run, predictor: Predictor) -> None:
    """Run the pipeline segment by segment, each on a fresh DuckDB connection (`run.con`)."""
    segments = _reads(run)
    remaining = [run.cfg.limit]  # rows the reader may still emit (None: no limit)
    for i, reads in enumerate(segments):
        # A fresh connection per segment: DuckDB's page cache goes with the old one, so
        # memory does not grow with the table. The first segment runs on the connection
        # score() opened after the checks, which is fresh already.
        if i:
            run.reconnect()
        _segment(run, reads, remaining, predictor)
        if remaining[0] == 0:
            break


def _segment(run: Run, reads, remaining: list, predictor: Predictor) -> None:
    cfg = run.cfg
    stop = threading.Event()
    errors: list[BaseException] = []
    to_infer: queue.Queue = queue.Queue(maxsize=2)
    to_write: queue.Queue = queue.Queue(maxsize=2)
    reader_con, writer_con = run.con.cursor(), run.con.cursor()

    def batches():
        for kind, make in reads:
            if remaining[0] == 0:
                return
            query = make(reader_con, remaining[0])
            if query is None:
                continue
            if kind == "stream":
                yield from record_batches(reader_con.sql(query[0], params=query[1]), cfg.chunk_rows)
            else:  # a short query: fetched whole, so its read transaction ends at once
                table = arrow_table(reader_con.sql(query[0], params=query[1]))
                yield from table.to_batches(max_chunksize=cfg.chunk_rows)

    def read() -> None:
        try:
            for batch in batches():
                if remaining[0] is not None:
                    batch = batch.slice(0, remaining[0])
                    remaining[0] -= batch.num_rows
                if not batch.num_rows:
                    continue
                window = tokenize_window(batch.column(0), batch.column(1), predictor)
                _put(to_infer, window, stop)
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
                run.commit(writer_con, rows, counts, window.skipped_reasons())
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
            _put(to_write, window, stop)
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
        reader_con.close()
        writer_con.close()
    if errors:
        raise errors[0]
