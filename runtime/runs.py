"""The run record: `ScoreConfig` in, `RunStats` out, and the `runs` row in between.

Both engines (local_engine.py, ray_engine.py) go through the same three steps here,
so a run is checked, recorded and counted the same way whichever engine scores it:

1. `checked_run(cfg)` checks everything that can be wrong with the input (config,
   bundle, databases, table, columns, ids, filter) and raises a one-line error before
   anything is written; it yields a `Run` holding the bundle, the checked source, the
   row counts and the live DuckDB connection, and closes that connection at the end.
2. The engine decides where the model runs (that may still fail, and writes nothing),
   then `run.record(...)` creates or checks the results tables, registers the model,
   closes runs left 'running' by a killed process as 'interrupted', and opens this
   run's row. On exit the row is closed as completed, failed (with the error's first
   line) or interrupted (KeyboardInterrupt).
3. Inside, the engine commits each chunk with `run.commit(...)`: the scores rows and
   the run counters in one transaction, then `RunStats` and the progress line.

This module knows nothing about tokenization, ONNX Runtime or threads.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from marketpulse.bundle import Bundle, load_bundle
from marketpulse.errors import MarketpulseError
from marketpulse.runtime import results
from marketpulse.runtime.progress import Progress, format_duration
from marketpulse.runtime.source import (
    Source,
    check_source,
    count_rows,
    low_memory,
    open_databases,
)

DEFAULT_CHUNK_ROWS = 4096


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


@dataclass
class Run:
    """One scoring run: its checked input, its live connection and, once recorded, its row.

    `con` is the connection in use; the local engine replaces it (`reconnect`) between
    segments, and the run row is closed on whichever connection is live at the end.
    """

    cfg: ScoreConfig
    bundle: Bundle
    con: object
    source: Source | None = None
    matching: int = 0  # rows passing the filter
    done: int = 0  # of which this model version already scored
    stats: RunStats | None = None
    progress: Progress | None = None
    p_cols: list[str] = field(default_factory=list)

    def reconnect(self):
        """A fresh connection in place of the live one (DuckDB's page cache goes with it)."""
        self.con.close()
        self.con, _ = open_databases(
            Path(self.cfg.db), self.cfg.results_db, self.cfg.memory_limit, threads=1
        )
        return self.con

    @contextmanager
    def record(
        self, *, provider: str, variant: str, reason: str, engine: str
    ) -> Iterator[RunStats]:
        """The `runs` row around the scoring; yields the `RunStats` that `commit` updates."""
        cfg, con = self.cfg, self.con
        self.p_cols = results.prepare(
            con, cfg.results_table, self.source.id_type, self.bundle.labels
        )
        results.register_model(con, self.bundle)
        dead = results.close_dead_runs(con)
        unscored = self.matching - self.done
        pending = unscored if cfg.limit is None else min(unscored, cfg.limit)
        stats = self.stats = RunStats(
            run_id=uuid.uuid4().hex[:12],
            model_version=self.bundle.version,
            source=cfg.table,
            results_table=cfg.results_table,
            results_db=str(cfg.results_db or cfg.db),
            provider=provider,
            variant=variant,
            provider_reason=reason,
            rows_pending=pending,
            rows_already_scored=self.done,
        )
        progress = self.progress = Progress(
            pending, enabled=cfg.progress, log_every=cfg.progress_every
        )
        if dead:
            progress.log(f"marked {dead} run(s) left 'running' by a killed process as interrupted")
        results.start_run(
            con,
            {
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
            },
        )
        start = time.perf_counter()
        error = None
        try:
            yield stats
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
            results.finish_run(self.con, stats.run_id, stats.status, stats.rows_per_s, error)

    def commit(self, con, rows, counts: dict[str, int], reasons: dict[str, int]) -> None:
        """Write one chunk (scores rows + run counters, one transaction), then count it.

        `counts` has scored / skipped / failed / truncated; `reasons` the skipped rows
        per reason. `con` may be a cursor of the live connection (the local writer's).
        """
        stats = self.stats
        results.write_chunk(con, self.cfg.results_table, rows, stats.run_id, counts)
        stats.rows_scored += counts["scored"]
        stats.rows_skipped += counts["skipped"]
        stats.rows_failed += counts["failed"]
        stats.rows_truncated += counts["truncated"]
        for reason, n in reasons.items():
            stats.skipped_reasons[reason] = stats.skipped_reasons.get(reason, 0) + n
        self.progress.update(counts["scored"] + counts["skipped"] + counts["failed"])


@contextmanager
def checked_run(cfg: ScoreConfig) -> Iterator[Run]:
    """Check the config, bundle, databases and source; yield the `Run`; close its connection."""
    check_config(cfg)
    bundle = load_bundle(Path(cfg.bundle))
    con, attached = open_databases(Path(cfg.db), cfg.results_db, cfg.memory_limit, threads=1)
    run = Run(cfg, bundle, con)
    try:
        with low_memory(con, cfg.memory_limit):
            run.source = check_source(con, cfg.table, cfg.id_col, cfg.text_col, cfg.where, attached)
            run.matching, run.done = count_rows(con, run.source, cfg.results_table, bundle.version)
        yield run
    finally:
        run.con.close()
