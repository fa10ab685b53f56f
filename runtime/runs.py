"""The run record: `ScoreConfig` in, `RunStats` out, and the `runs` row in between.

Both engines (local_engine.py, ray_engine.py) go through the same three steps here,
so a run is checked, recorded and counted the same way whichever engine scores it:

1. `checked_run(cfg)` takes the run lock, checks everything that can be wrong with the
   input (config, bundle, databases, table, columns, ids, filter, the names of the
   results tables) on a read-only connection and raises a one-line error before
   anything is written; it yields a `Run` holding the bundle, the checked source, the
   row counts and the `Database` (database.py) that opens a connection per session.
   A new results file is made by the first write only, and a run that fails before
   its first commit removes the files it made (database.py's `run_lock`), so a failed
   run leaves the folder as it found it.
2. The engine decides where the model runs (that may still fail, and writes nothing),
   then `run.record(...)` creates or checks the results tables, registers the model,
   closes runs left 'running' by a killed process as 'interrupted', and opens this
   run's row. On exit the row is closed as completed, failed (with the error's first
   line) or interrupted. Inside it, SIGTERM and SIGINT ask for a graceful stop
   (`run.stopping`): the engine finishes the chunk in hand, commits, and `record`
   raises `Interrupted`; a second signal stops at once.
3. Inside, the engine hands each chunk to `run.add(...)`, which commits what it holds
   once `commit_seconds` have passed since the last commit (`run.flush`): the scores
   rows and the run counters in one transaction, on a connection open only for it,
   then `RunStats` and the progress line.

This module knows nothing about tokenization, ONNX Runtime or threads.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from marketpulse.bundle import Bundle, load_bundle
from marketpulse.errors import MarketpulseError, first_line
from marketpulse.runtime import autovariant, results
from marketpulse.runtime import canary as run_canary
from marketpulse.runtime.database import Database
from marketpulse.runtime.drift import DriftResult, RunDrift
from marketpulse.runtime.drift import message as drift_message
from marketpulse.runtime.drift import record as record_drift
from marketpulse.runtime.progress import Progress, format_duration
from marketpulse.runtime.source import (
    Source,
    check_source,
    checked_size,
    count_rows,
    low_memory,
    reading,
)
from marketpulse.sql import DEFAULT_STORAGE_VERSION, check_storage_version

DEFAULT_CHUNK_ROWS = 4096
# Seconds between commits: each commit holds the file for a moment, so on a fast device
# many small commits would keep readers out much of the time; on CPU a chunk takes
# longer than this and every chunk is committed as soon as it is scored.
DEFAULT_COMMIT_SECONDS = 5.0
# How long a commit waits for readers to let go of the file before the run fails.
DEFAULT_LOCK_TIMEOUT = 3600.0


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM or SIGINT after committing the chunk in hand."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.stats: RunStats | None = None  # set by Run.record

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal (SIGINT 130, SIGTERM 143)."""
        return 128 + self.signum


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
    variant: str | None = "auto"  # auto: timed per machine (autovariant.py); None: preference
    limit: int | None = None
    where: str | None = None
    threads: int | None = None
    batch_tokens: int | None = None  # None: the device's default (predictor.py)
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    memory_limit: str = "512MB"
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    commit_seconds: float = DEFAULT_COMMIT_SECONDS
    storage_version: str = DEFAULT_STORAGE_VERSION  # of a results file the run creates
    progress: bool = True
    progress_every: float = 10.0  # seconds between progress lines when stderr is not a TTY
    cache_dir: Path | None = None  # --variant auto's timings; None: ~/.cache/marketpulse
    canary_rows: int = run_canary.DEFAULT_ROWS  # rows rescored by fp32 (canary.py); 0: off
    auto_check_rows: int = autovariant.CHECK_ROWS  # auto's pick checked on the text; 0: off
    # int8 rows within this top-two gap rescored by fp32 (predictor.py); None: the bundle's
    rescore_margin: float | None = None


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
    variant_reason: str = ""
    status: str = "running"
    rows_pending: int = 0
    rows_already_scored: int = 0
    rows_scored: int = 0
    rows_skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    rows_truncated: int = 0
    rows_failed: int = 0
    rows_duplicate: int = 0  # of rows_scored: copies of a same text's result in the window
    rows_rescored: int = 0  # of rows_scored: hesitant quantized rows rescored by fp32
    rescore_margin: float = 0.0  # the top-two gap below which a row was rescored (0: none)
    seconds: float = 0.0
    rows_per_s: float = 0.0
    drift: dict = field(default_factory=dict)  # runtime.drift.DriftResult.to_dict()
    canary: dict = field(default_factory=dict)  # runtime.canary.CanaryResult.to_dict()

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        reasons = ", ".join(f"{n:,} {r}" for r, n in sorted(self.skipped_reasons.items()))
        skipped = f" ({reasons})" if reasons else ""
        rescored = f" ({self.rows_rescored:,} rescored by fp32)" if self.rows_rescored else ""
        return (
            f"{self.status}: scored {self.rows_scored:,} rows{rescored}, skipped {self.rows_skipped:,}"
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
    if cfg.canary_rows < 0:
        raise MarketpulseError(f"--canary-rows must be 0 or more, got {cfg.canary_rows}")
    if cfg.rescore_margin is not None and not 0 <= cfg.rescore_margin < 1:
        raise MarketpulseError(
            f"--rescore-margin {cfg.rescore_margin} is outside 0..1; pass 0 for int8 alone, "
            "or leave it out for the bundle's"
        )
    if cfg.auto_check_rows < 0:
        raise MarketpulseError(f"--auto-check-rows must be 0 or more, got {cfg.auto_check_rows}")
    if cfg.lock_timeout < 0 or cfg.commit_seconds < 0:
        raise MarketpulseError("--lock-timeout and --commit-seconds must be 0 or more")
    checked_size(cfg.memory_limit)
    check_storage_version(cfg.storage_version)
    results.check_results_table_name(cfg.results_table)  # before a results file is made


@dataclass
class Run:
    """One scoring run: its checked input, its database sessions and, once recorded, its row."""

    cfg: ScoreConfig
    bundle: Bundle
    db: Database
    source: Source | None = None
    matching: int = 0  # rows passing the filter
    done: int = 0  # of which this model version already scored
    stats: RunStats | None = None
    progress: Progress | None = None
    p_cols: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    stop_signal: int | None = None
    drift: RunDrift | None = None
    canary: run_canary.CanaryResult | None = None  # set by the engine before the run ends
    _held: list = field(default_factory=list)  # (rows, counts, reasons) not yet committed
    _last_commit: float = field(default_factory=time.monotonic)

    @property
    def pending(self) -> int:
        """Rows this run will score: those matching and not yet scored, up to --limit."""
        unscored = self.matching - self.done
        return unscored if self.cfg.limit is None else min(unscored, self.cfg.limit)

    @contextmanager
    def record(
        self,
        *,
        provider: str,
        variant: str,
        reason: str,
        engine: str,
        variant_reason: str = "",
        rescore_margin: float = 0.0,
    ) -> Iterator[RunStats]:
        """The `runs` row around the scoring; yields the `RunStats` that `flush` updates.

        The engine sets `self.canary` before the block ends; it is recorded with the row.
        """
        cfg = self.cfg
        run_id = uuid.uuid4().hex[:12]
        with self.db.write() as con:
            self.p_cols = results.prepare(
                con, cfg.results_table, self.source.id_type, self.bundle.labels
            )
            results.register_model(con, self.bundle)
            dead = results.close_dead_runs(con)
            self._start_row(con, run_id, provider, variant, engine, variant_reason, rescore_margin)
        pending = self.pending
        stats = self.stats = RunStats(
            run_id=run_id,
            model_version=self.bundle.version,
            source=cfg.table,
            results_table=cfg.results_table,
            results_db=str(cfg.results_db or cfg.db),
            provider=provider,
            variant=variant,
            provider_reason=reason,
            variant_reason=variant_reason,
            rows_pending=pending,
            rows_already_scored=self.done,
            rescore_margin=rescore_margin,
        )
        progress = self.progress = Progress(
            pending, enabled=cfg.progress, log_every=cfg.progress_every
        )
        if dead:
            progress.log(f"marked {dead} run(s) left 'running' by a killed process as interrupted")
        start = time.perf_counter()
        self._last_commit = time.monotonic()
        error = None
        # A signal while the run row is closed is handled too: the row is written whole.
        with self._signals():
            try:
                self.drift = RunDrift(self.bundle)
                yield stats
                if self.stop_signal is not None:
                    if not self._all_committed(stats):
                        raise Interrupted(self.stop_signal)
                    name = signal.Signals(self.stop_signal).name
                    self.progress.log(f"{name} came with the last chunk in hand: run completed")
                stats.status = "completed"
            except KeyboardInterrupt as exc:
                stats.status = "interrupted"
                if isinstance(exc, Interrupted):
                    exc.stats = stats
                raise
            except BaseException as exc:
                stats.status = "failed"
                error = first_line(exc)
                raise
            finally:
                self._close(stats, start, variant, error)

    def _all_committed(self, stats: RunStats) -> bool:
        """Every row the run set out to score is committed (a signal that came during the
        last chunk stopped nothing: the run is complete, not interrupted)."""
        done = stats.rows_scored + stats.rows_skipped + stats.rows_failed
        return not self._held and done >= stats.rows_pending

    def _close(self, stats: RunStats, start: float, variant: str, error: str | None) -> None:
        """Report drift and the canary, and write the run row's end (one transaction)."""
        self.progress.close()
        # the scoring's time: the canary's rescoring after it is reported on its own
        spent_on_canary = self.canary.seconds if self.canary is not None else 0.0
        stats.seconds = time.perf_counter() - start - spent_on_canary
        stats.rows_per_s = (stats.rows_scored + stats.rows_skipped) / max(stats.seconds, 1e-9)
        measured = self._measure_drift()
        if measured is not None:
            stats.drift = measured.to_dict()
            if line := drift_message(measured):
                self.progress.log(line)
        if self.canary is not None:
            stats.canary = self.canary.to_dict()
            if line := run_canary.message(self.canary, variant):
                self.progress.log(line)
        try:
            with self.db.write(checkpoint=True) as con:
                results.finish_run(con, stats.run_id, stats.status, stats.rows_per_s, error)
                if measured is not None:
                    record_drift(con, stats.run_id, measured)
                if self.canary is not None:
                    run_canary.record(con, stats.run_id, self.canary)
        except MarketpulseError as exc:
            # The run's own error matters more; the next run closes this row.
            self.progress.log(f"could not close the run row: {exc}")
            if stats.status == "completed":
                raise

    def _measure_drift(self) -> DriftResult | None:
        """The run's drift figures; a failure to measure them never keeps the row open."""
        if self.drift is None:
            return None
        try:
            return self.drift.finish()
        except Exception as exc:  # the scores are committed: the row must still close
            return DriftResult(note=f"drift not measured: {first_line(exc)}")

    def _start_row(
        self,
        con,
        run_id: str,
        provider: str,
        variant: str,
        engine: str,
        variant_reason: str,
        rescore_margin: float,
    ) -> None:
        cfg = self.cfg
        results.start_run(
            con,
            {
                "run_id": run_id,
                "model_version": self.bundle.version,
                "source": cfg.table,
                "rows_scored": 0,
                "rows_skipped": 0,
                "rows_failed": 0,
                "rows_truncated": 0,
                "rows_duplicate": 0,
                "rows_rescored": 0,
                "started_at": results.utcnow(),
                "status": "running",
                "results_table": cfg.results_table,
                "source_db": str(Path(cfg.db).resolve()),
                "results_db": str(self.db.target.resolve()),
                "filter": cfg.where,
                "row_limit": cfg.limit,
                "provider": provider,
                "variant": variant,
                "variant_reason": variant_reason or None,
                "rescore_margin": rescore_margin,
                "engine": engine,
            },
        )

    def add(self, rows, counts: dict[str, int], reasons: dict[str, int]) -> None:
        """Hold one chunk's scores rows; commit what is held once `commit_seconds` passed.

        `counts` has scored / skipped / failed / truncated / duplicates; `reasons` the
        skipped rows per reason.
        """
        self._held.append((rows, counts, reasons))
        if time.monotonic() - self._last_commit >= self.cfg.commit_seconds:
            self.flush()

    def flush(self, checkpoint: bool = False) -> None:
        """Commit the held chunks (scores rows + run counters, one transaction), count them.

        `checkpoint` folds DuckDB's write-ahead log into the file (segment ends).
        """
        import pyarrow as pa

        held, self._held = self._held, []
        if held:
            total = {k: sum(c[k] for _, c, _ in held) for k in held[0][1]}
            with self.db.write(checkpoint=checkpoint) as con:
                rows = pa.concat_tables([r for r, _, _ in held], promote_options="default")
                results.write_chunk(con, self.cfg.results_table, rows, self.stats.run_id, total)
        elif checkpoint:
            with self.db.write(checkpoint=True):
                pass
        self._last_commit = time.monotonic()
        stats = self.stats
        for rows, counts, reasons in held:
            self.drift.add(rows, counts)
            stats.rows_scored += counts["scored"]
            stats.rows_skipped += counts["skipped"]
            stats.rows_failed += counts["failed"]
            stats.rows_truncated += counts["truncated"]
            stats.rows_duplicate += counts["duplicates"]
            stats.rows_rescored += counts.get("rescored", 0)
            for reason, n in reasons.items():
                stats.skipped_reasons[reason] = stats.skipped_reasons.get(reason, 0) + n
            self.progress.update(counts["scored"] + counts["skipped"] + counts["failed"])

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM / SIGINT: finish and commit the chunk in hand, then stop; twice: at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stopping.is_set():
                raise Interrupted(signum)
            self.stop_signal = signum
            self.stopping.set()
            self.progress.log(
                f"{signal.Signals(signum).name}: stopping after the chunk in hand and "
                "committing it (send it again to stop at once)"
            )

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _count(con, run: Run, version: str) -> tuple[int, int]:
    """count_rows, with a read that fails on the table's values as a one-line error.

    The count evaluates the filter on every row, so a value it cannot cast (`id = ''`)
    fails here, before anything is written, and not later while scoring.
    """
    with reading(run.cfg.table, run.cfg.where):
        return count_rows(con, run.source, run.cfg.results_table, version)


@contextmanager
def checked_run(cfg: ScoreConfig) -> Iterator[Run]:
    """Check the config, bundle, databases and source under the run lock; yield the `Run`."""
    check_config(cfg)
    bundle = load_bundle(Path(cfg.bundle))
    db = Database(
        Path(cfg.db),
        Path(cfg.results_db) if cfg.results_db else None,
        cfg.memory_limit,
        cfg.lock_timeout,
        cfg.storage_version,
    )
    db.prepare()
    with db.run_lock():
        run = Run(cfg, bundle, db)
        with db.read() as con, low_memory(con, cfg.memory_limit):
            run.source = check_source(
                con, cfg.table, cfg.id_col, cfg.text_col, cfg.where, db.attached
            )
            results.check_tables(con, cfg.results_table, run.source.id_type)
            results.check_one_source(
                con,
                cfg.results_table,
                cfg.table,
                str(Path(cfg.db).resolve()),
                str(db.target.resolve()),
            )
            run.matching, run.done = _count(con, run, bundle.version)
        yield run
