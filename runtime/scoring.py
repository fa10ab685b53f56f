"""`score(ScoreConfig) -> RunStats`: score a DuckDB table with a bundle, resumably.

Read top to bottom:
1. Check everything that can be wrong with the input (bundle, databases, table,
   columns, ids, filter, device) and raise one-line errors before writing anything.
2. Create or check the results tables, register the model, open a run row.
3. Stream pending rows (not yet scored by this model version) through three stages
   that overlap, because DuckDB, the Rust tokenizer and ONNX Runtime all release the
   GIL:
       reader thread:  DuckDB record batch -> split NULL/empty -> tokenize the window
       main thread:    length-sorted token-budget batches -> ONNX Runtime (on CPU,
                       one batch per core at a time) -> softmax
       writer thread:  one transaction per window: scores rows + run counters
   Queues between stages are short, so at most a few windows are in memory.
4. Close the run row as completed, failed or interrupted.

The three window stages (`tokenize_window`, `infer_window`, `results_table`) and the
run bookkeeping (`tracked_run`) are public: the Ray engine (ray_engine.py) runs the same
ones inside its actors.

A row whose batch fails in ONNX Runtime is retried alone; if it still fails it is
counted as failed and not written, so the next run tries it again.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from marketpulse.bundle import load_bundle
from marketpulse.errors import MarketpulseError
from marketpulse.inference.predictor import Predictor, available_cores
from marketpulse.runtime import results
from marketpulse.runtime.progress import Progress, format_duration
from marketpulse.runtime.source import (
    check_source,
    count_rows,
    low_memory,
    open_databases,
    pending_query,
    pending_range,
    rowid_span,
)

DEFAULT_CHUNK_ROWS = 4096
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


@dataclass(frozen=True)
class ScoreConfig:
    db: Path
    table: str
    id_col: str
    text_col: str
    bundle: Path
    results_db: Path | None = None
    results_table: str = "scores"
    device: str = "auto"
    variant: str | None = None
    limit: int | None = None
    where: str | None = None
    threads: int | None = None
    batch_tokens: int | None = None  # None: the device's default (predictor.py)
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    memory_limit: str = "512MB"
    progress: bool = True
    progress_every: float = 10.0  # seconds between progress lines when stderr is not a TTY


@dataclass
class RunStats:
    run_id: str
    model_version: str
    source: str
    results_table: str
    results_db: str
    provider: str = ""
    variant: str = ""
    provider_reason: str = ""
    status: str = "running"
    rows_pending: int = 0
    rows_already_scored: int = 0
    rows_scored: int = 0
    rows_skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    rows_truncated: int = 0
    rows_failed: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        reasons = ", ".join(f"{n:,} {r}" for r, n in sorted(self.skipped_reasons.items()))
        skipped = f" ({reasons})" if reasons else ""
        return (
            f"{self.status}: scored {self.rows_scored:,} rows, skipped {self.rows_skipped:,}"
            f"{skipped}, truncated {self.rows_truncated:,}, failed {self.rows_failed:,}, "
            f"{self.rows_already_scored:,} already scored; {format_duration(self.seconds)} at "
            f"{self.rows_per_s:,.0f} rows/s -> {self.results_table} in {self.results_db} "
            f"(run {self.run_id}, model {self.model_version}, {self.provider} {self.variant})"
        )


def check_config(cfg: ScoreConfig) -> None:
    if cfg.limit is not None and cfg.limit < 0:
        raise MarketpulseError(f"--limit must be 0 or more, got {cfg.limit}")
    if cfg.batch_tokens is not None and cfg.batch_tokens < 64:
        raise MarketpulseError(f"--batch-tokens must be at least 64, got {cfg.batch_tokens}")
    if cfg.chunk_rows < 1:
        raise MarketpulseError(f"chunk_rows must be at least 1, got {cfg.chunk_rows}")
    if cfg.threads is not None and cfg.threads < 1:
        raise MarketpulseError(f"--threads must be at least 1, got {cfg.threads}")


def score(cfg: ScoreConfig) -> RunStats:
    """Score every pending row of `cfg.table`; return what the run did."""
    check_config(cfg)
    bundle = load_bundle(Path(cfg.bundle))
    threads = cfg.threads or available_cores()

    def reconnect(old=None):
        if old is not None:
            old.close()
        return open_databases(Path(cfg.db), cfg.results_db, cfg.memory_limit, threads=1)

    con, attached = reconnect()
    db = [con]  # the live connection; segments replace it
    try:
        with low_memory(con, cfg.memory_limit):
            source = check_source(con, cfg.table, cfg.id_col, cfg.text_col, cfg.where, attached)
            matching, done = count_rows(con, source, cfg.results_table, bundle.version)
        # The checks hashed every id and cached pages of the table: drop all that with
        # the connection before the model loads, so peak memory does not grow with it.
        con, _ = reconnect(con)
        db[0] = con
        predictor = Predictor(bundle, cfg.variant, cfg.device, threads)
        set_tokenizer_threads(predictor.device)
        with tracked_run(
            lambda: db[0],
            cfg,
            bundle,
            source,
            matching - done,
            done,
            provider=predictor.provider,
            variant=predictor.variant,
            reason=predictor.reason,
            engine="local",
        ) as (stats, progress, p_cols):
            progress.log(predictor.describe())
            _stream(db, reconnect, source, predictor, cfg, stats, p_cols, progress)
        return stats
    finally:
        db[0].close()


def set_tokenizer_threads(device: str) -> None:
    """Tokenize serially on CPU, in parallel on CUDA; call before the first encode.

    On CPU the tokenizer runs on the reader thread beside one ONNX Runtime batch per
    core: a Rayon pool per core would only oversubscribe the CPU. On CUDA the cores are
    otherwise idle and a single tokenizing thread can fall behind the GPU.
    """
    if device == "cpu":
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        os.environ["RAYON_NUM_THREADS"] = "1"
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


@contextmanager
def tracked_run(
    live_con: Callable,
    cfg: ScoreConfig,
    bundle,
    source,
    unscored: int,
    done: int,
    *,
    provider: str,
    variant: str,
    reason: str,
    engine: str,
) -> Iterator[tuple[RunStats, Progress, list[str]]]:
    """A `runs` row around one scoring run; shared by the local and the Ray engine.

    Prepares the results tables, registers the model and opens the run row, then yields
    (stats, progress, probability columns). On exit the row is closed as completed,
    failed (with the error's first line) or interrupted. `live_con()` returns the
    connection in use, which the local engine replaces while it streams.
    """
    con = live_con()
    p_cols = results.prepare(con, cfg.results_table, source.id_type, bundle.labels)
    results.register_model(con, bundle)
    dead = results.close_dead_runs(con)
    pending = unscored if cfg.limit is None else min(unscored, cfg.limit)
    stats = RunStats(
        run_id=uuid.uuid4().hex[:12],
        model_version=bundle.version,
        source=cfg.table,
        results_table=cfg.results_table,
        results_db=str(cfg.results_db or cfg.db),
        provider=provider,
        variant=variant,
        provider_reason=reason,
        rows_pending=pending,
        rows_already_scored=done,
    )
    progress = Progress(pending, enabled=cfg.progress, log_every=cfg.progress_every)
    if dead:
        progress.log(f"marked {dead} run(s) left 'running' by a killed process as interrupted")
    run = {
        "run_id": stats.run_id,
        "model_version": stats.model_version,
        "source": cfg.table,
        "rows_scored": 0,
        "rows_skipped": 0,
        "rows_failed": 0,
        "rows_truncated": 0,
        "started_at": results.utcnow(),
        "status": "running",
        "results_table": cfg.results_table,
        "source_db": str(Path(cfg.db).resolve()),
        "filter": cfg.where,
        "row_limit": cfg.limit,
        "provider": provider,
        "variant": variant,
        "engine": engine,
    }
    results.start_run(con, run)
    start = time.perf_counter()
    error = None
    try:
        yield stats, progress, p_cols
        stats.status = "completed"
    except KeyboardInterrupt:
        stats.status = "interrupted"
        raise
    except BaseException as exc:
        stats.status = "failed"
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    finally:
        progress.close()
        stats.seconds = time.perf_counter() - start
        stats.rows_per_s = (stats.rows_scored + stats.rows_skipped) / max(stats.seconds, 1e-9)
        results.finish_run(live_con(), stats.run_id, stats.status, stats.rows_per_s, error)


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


@dataclass
class Window:
    ids: object  # pyarrow Array, the source id type
    texts: list
    reasons: list  # None for rows to score, else 'null_text' / 'empty_text'
    valid: np.ndarray  # int indices of rows to score
    encoded: object = None  # batching.Encoded for the valid rows
    probs: np.ndarray | None = None  # (len(valid), n_labels)
    failed: np.ndarray | None = None  # bool (len(valid),)


def _reads(con, source, cfg, version):
    """Per segment, a list of (sql, params) makers for the reader: rowid ranges, or one query."""
    span = rowid_span(con, source)
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


def _stream(db: list, reconnect, source, predictor: Predictor, cfg, stats, p_cols, progress):
    """Run the pipeline segment by segment on a fresh DuckDB connection each (`db[0]`)."""
    segments = _reads(db[0], source, cfg, stats.model_version)
    remaining = [cfg.limit]  # rows the reader may still emit (None: no limit)
    for i, reads in enumerate(segments):
        # A fresh connection per segment: DuckDB's page cache goes with the old one, so
        # memory does not grow with the table. The first segment runs on the connection
        # score() opened after the checks, which is fresh already.
        if i:
            db[0], _ = reconnect(db[0])
        _segment(db[0], reads, remaining, predictor, cfg, stats, p_cols, progress)
        if remaining[0] == 0:
            break


def _segment(con, reads, remaining, predictor, cfg, stats, p_cols, progress) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    to_infer: queue.Queue = queue.Queue(maxsize=2)
    to_write: queue.Queue = queue.Queue(maxsize=2)
    reader_con, writer_con = con.cursor(), con.cursor()

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
                table = _arrow_table(reader_con.sql(query[0], params=query[1]))
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
                table, counts = results_table(window, predictor, stats.model_version, p_cols)
                results.write_chunk(writer_con, cfg.results_table, table, stats.run_id, counts)
                stats.rows_scored += counts["scored"]
                stats.rows_skipped += counts["skipped"]
                stats.rows_failed += counts["failed"]
                stats.rows_truncated += counts["truncated"]
                for reason in filter(None, window.reasons):
                    stats.skipped_reasons[reason] = stats.skipped_reasons.get(reason, 0) + 1
                progress.update(counts["scored"] + counts["skipped"] + counts["failed"])
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


def _arrow_table(relation):
    """A DuckDB relation's rows as one Arrow table (the method's name varies by version)."""
    if hasattr(relation, "to_arrow_table"):  # duckdb >= 2
        return relation.to_arrow_table()
    return relation.fetch_arrow_table()


def tokenize_window(ids, texts, predictor: Predictor) -> Window:
    """A window of source rows (Arrow id and text arrays): NULL/empty text set aside
    with its reason, the rest tokenized. Stage 1 of scoring; both engines use it."""
    texts = texts.to_pylist()
    reasons = [
        "null_text" if t is None else ("empty_text" if not t.strip() else None) for t in texts
    ]
    valid = np.fromiter((i for i, r in enumerate(reasons) if r is None), np.int64)
    window = Window(ids, texts, reasons, valid)
    window.encoded = predictor.encoder.encode([texts[i] for i in valid])
    return window


def record_batches(relation, rows: int):
    """A streaming Arrow reader over a DuckDB relation (the method's name varies by version)."""
    if hasattr(relation, "to_arrow_reader"):  # duckdb >= 2
        return relation.to_arrow_reader(rows)
    return relation.fetch_arrow_reader(rows)


def infer_window(window: Window, predictor: Predictor, batch_tokens: int | None) -> None:
    window.probs, window.failed, error = predictor.run_batches(window.encoded, batch_tokens)
    if len(window.valid) and window.failed.all():
        raise MarketpulseError(
            f"ONNX Runtime failed on every row of a window ({error}); check the bundle with "
            "`marketpulse inspect`, or rerun with --device cpu"
        ) from error


def results_table(window: Window, predictor: Predictor, version: str, p_cols: list[str]):
    """The window's rows for the scores table (failed rows left out) and its counters."""
    import pyarrow as pa

    n = len(window.texts)
    keep = np.ones(n, dtype=bool)
    keep[window.valid[window.failed]] = False
    scored = np.zeros(n, dtype=bool)
    scored[window.valid[~window.failed]] = True
    probs = np.full((n, len(p_cols)), np.nan)
    probs[window.valid] = window.probs
    best = probs[window.valid].argmax(axis=1) if len(window.valid) else np.zeros(0, int)
    labels = np.full(n, None, dtype=object)
    labels[window.valid] = np.asarray(predictor.labels, dtype=object)[best]
    truncated = np.zeros(n, dtype=bool)
    truncated[window.valid] = window.encoded.truncated
    confidence = np.nanmax(np.where(scored[:, None], probs, -1.0), axis=1)
    rows = np.flatnonzero(keep)
    scored_at = np.datetime64(results.utcnow(), "us")
    columns = {
        "id": window.ids.take(pa.array(rows)),
        "model_version": pa.array([version] * len(rows), pa.string()),
        "label": pa.array(labels[rows].tolist(), pa.string()),
        "confidence": pa.array(confidence[rows], mask=~scored[rows]),
        "reason": pa.array([window.reasons[i] for i in rows], pa.string()),
        "truncated": pa.array(truncated[rows]),
        "scored_at": pa.array(np.full(len(rows), scored_at)),
    }
    for j, col in enumerate(p_cols):
        columns[col] = pa.array(probs[rows, j], mask=~scored[rows])
    counts = {
        "scored": int(scored.sum()),
        "skipped": int(sum(r is not None for r in window.reasons)),
        "failed": int(window.failed.sum()),
        "truncated": int(truncated[scored].sum()),
    }
    return pa.table(columns), counts
