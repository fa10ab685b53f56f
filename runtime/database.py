"""How a run holds the DuckDB file: briefly, so other processes can read it meanwhile.

DuckDB's concurrency model: ONE process may open a database file read-write, OR any
number of processes may open it read-only; an OS lock on the file keeps the two apart.
A run that kept a read-write connection open for hours would lock every dashboard and
`duckdb -readonly` out for hours. So a run never keeps the file open:

- Reads (the input checks, each range of pending rows) use a read-only connection,
  which shares the file with every other reader.
- Writes (the results tables, each commit of a few chunks, the run row) use a
  read-write connection that is opened, used and closed within a fraction of a second.
  The commits go to DuckDB's write-ahead log without a checkpoint (readers replay the
  log: they see every committed chunk and nothing else); the writer checkpoints at the
  end of each segment, so the results table still gets whole row groups.
- Opening waits with backoff while another process holds a conflicting lock, up to
  `lock_timeout` seconds, and says that it waits for a reader.

Since DuckDB's lock no longer keeps two `score` runs on one results database apart for
the whole run, a run holds an advisory lock (`flock`) on `<results db>.marketpulse.lock`
from start to end. Holding it also proves that a run row still 'running' belongs to a
dead process. A killed process releases it with its file descriptors.

A run that fails leaves the folder as it found it unless it committed something: a new
results file is made only by the first write (the checks before it read an empty
in-memory database in its place), and a run that fails before its first commit removes
the files it made (the results file, its write-ahead log, the lock file), never one that
was there before (`run_lock`).

A view's pending rows are staged to Parquet in a folder beside the results file
(`staging_dir`), removed when the run ends; a killed run cannot remove it. Each folder
holds an `owner.lock` that its run keeps flocked, so a later run removes the folders whose
lock nobody holds, and only those (`remove_stale_staging`); marketpulse/owned_folders.py
makes and sweeps such folders.

Within the process one mutex serialises the sessions: DuckDB refuses a read-only and a
read-write connection to one file in the same process at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from marketpulse.errors import MarketpulseError, first_line
from marketpulse.owned_folders import owned_folder, remove_dead_folders
from marketpulse.runtime.source import SOURCE_ALIAS, checked_size
from marketpulse.sources import not_duckdb_error
from marketpulse.sql import connect, create_database, retry_on_lock

# DuckDB checkpoints a write-ahead log above this size on its own (its default is 16MB,
# under one segment's results, which would end row groups early); readers replay the log
# on open, so it is bounded all the same.
WAL_AUTOCHECKPOINT = "64MB"
# A view's staging folder beside the results file (an `owned_folder`, its lock file in it).
# It is made under the second name and renamed once the lock is held, so a folder under
# STAGE_PREFIX without a lock file was made before there were any (an older marketpulse).
STAGE_PREFIX = ".marketpulse-stage-"
_MAKING_PREFIX = ".marketpulse-staging-"


# DuckDB's words for a file it could not write (disk full, a read-only file or folder);
# a failed COMMIT reports them as a TransactionException.
_IO_WORDS = re.compile(
    r"could not write|could not open|cannot open file|no space left|file too large|"
    r"permission denied|read-only|disk quota|i/o error|input/output error",
    re.IGNORECASE,
)


# DuckDB's words for a file that exists but is no DuckDB database.
_NOT_A_DATABASE = re.compile(r"not a valid DuckDB database", re.IGNORECASE)


def _is_io_error(exc: BaseException) -> bool:
    """The error is the file system's: full, read-only, or gone (its fix is the disk's)."""
    import duckdb

    io_types = (duckdb.IOException, duckdb.PermissionException, duckdb.FatalException)
    return isinstance(exc, io_types) or bool(_IO_WORDS.search(str(exc)))


def _stderr(message: str) -> None:
    print(f"marketpulse: {message}", file=sys.stderr, flush=True)


@dataclass
class Database:
    """The source and results files of one run, opened per session."""

    db: Path
    results_db: Path | None
    memory_limit: str
    lock_timeout: float
    storage_version: str
    log: Callable[[str], None] = _stderr
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _run_lock: object = field(default=None, repr=False)
    # the files the first write made (the results file, its log); a write session
    # committed (see run_lock)
    _made: list[Path] = field(default_factory=list, repr=False)
    _committed: bool = field(default=False, repr=False)

    @property
    def attached(self) -> bool:
        """True when the source lives in another file than the results."""
        return self.results_db is not None and (
            Path(self.results_db).resolve() != Path(self.db).resolve()
        )

    @property
    def target(self) -> Path:
        return Path(self.results_db) if self.attached else Path(self.db)

    @property
    def target_flag(self) -> str:
        """The flag that named `target`, for messages about it."""
        return "--results-db" if self.attached else "--db"

    def prepare(self) -> None:
        """Check the source file exists, and that a missing results file can be made.

        The results file is not made here but by the first write (`write`): a run that
        fails its checks, or cannot run on the device, must leave no empty file behind.
        What would stop its making (no folder, a storage version DuckDB does not know)
        is refused here all the same, before any check or timing runs.
        """
        if not Path(self.db).is_file():
            raise MarketpulseError(
                f"database file {self.db} not found; pass --db with an existing DuckDB file"
            )
        if self.attached and self.target.stem.lower() == SOURCE_ALIAS:
            raise MarketpulseError(
                f"--results-db {self.target} is named like the source's alias "
                f"{SOURCE_ALIAS!r} in its queries; give the results file another name"
            )
        create_database(self.target, self.storage_version, dry_run=True)

    @contextmanager
    def read(self) -> Iterator[object]:
        """A read-only connection on the results file, the source attached as SOURCE_ALIAS if apart."""
        with self._mutex:
            con = self._open(read_only=True)
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def write(self, checkpoint: bool = False) -> Iterator[object]:
        """A read-write connection on the results file; `checkpoint` folds the log in at close.

        DuckDB errors while writing (disk full, a read-only file) become one-line errors
        that say what to do; what was committed before stays, and a rerun goes on from it.
        """
        import duckdb

        with self._mutex:
            if not self.target.exists():  # the first write makes it (see `prepare`)
                made = self.target.resolve()  # a link's file, not the link
                self._made = [made, _wal(made), _wal(self.target)]
                create_database(self.target, self.storage_version)
            con = self._open(read_only=False)
            try:
                yield con
                if checkpoint:
                    con.execute("CHECKPOINT")
                self._committed = True
            except duckdb.Error as exc:
                raise self._write_error(exc) from exc
            finally:
                try:
                    con.close()
                except duckdb.Error:
                    pass  # the error that got here is the one to report

    def _write_error(self, exc: BaseException) -> MarketpulseError:
        """A DuckDB error while writing, as one line whose fix fits its kind."""
        first = first_line(exc)[:240]
        kept = "every chunk committed so far is kept and a rerun scores the rest"
        if _is_io_error(exc):
            return MarketpulseError(
                f"cannot write to {self.target} ({first}); free disk space or make the file "
                f"writable, then rerun: {kept}"
            )
        import duckdb

        if isinstance(exc, duckdb.OutOfMemoryException):
            fix = "DuckDB ran out of memory: raise --memory-limit or free memory, then rerun"
        elif isinstance(exc, duckdb.ConstraintException):
            fix = (
                "a constraint on the results tables refused the rows: drop that constraint, "
                "or pass --results-table with another name (or --results-db with another file)"
            )
        elif isinstance(exc, (duckdb.ProgrammingError, duckdb.DataError)):
            # binder, catalog, conversion: the tables are not (or no longer) as checked
            fix = (
                "the results tables are not the shape marketpulse writes (changed by another "
                "program?): pass --results-table with another name or --results-db with "
                "another file"
            )
        else:
            fix = "rerun, and report it if it happens again"
        return MarketpulseError(f"cannot write to {self.target} ({first}); {fix}: {kept}")

    def _waiting(self, seconds: float, error: str, path: Path | None = None) -> None:
        self.log(
            f"waiting for another process to release {path or self.target} ({seconds:.0f}s "
            f"so far, up to --lock-timeout {self.lock_timeout:.0f}s): {error}"
        )

    def _open(self, read_only: bool):
        import duckdb

        try:
            if read_only and not self.target.exists():
                con = self._in_place_of_target()
            else:
                con = connect(
                    self.target,
                    read_only=read_only,
                    timeout=self.lock_timeout,
                    on_wait=self._waiting,
                )
        except MarketpulseError:
            raise
        except duckdb.Error as exc:
            # a file that is not a database is refused as one, also when opened to write
            # (DuckDB says so with an IO error, which is no disk's fault)
            if read_only or _NOT_A_DATABASE.search(str(exc)):
                raise not_duckdb_error(self.target, exc, self.target_flag) from exc
            raise self._write_error(exc) from exc
        try:
            if self.attached:  # a writer may hold the source: wait as for the target
                retry_on_lock(
                    lambda: con.execute(f"ATTACH ? AS {SOURCE_ALIAS} (READ_ONLY)", [str(self.db)]),
                    self.db,
                    read_only=True,
                    timeout=self.lock_timeout,
                    on_wait=lambda seconds, error: self._waiting(seconds, error, self.db),
                    fix="close the process that writes it, or raise --lock-timeout",
                )
            # Capped memory keeps the buffer cache (and so RSS) flat however large the
            # table is; operators spill beyond it. No insertion order: results need none.
            con.execute(f"SET memory_limit = '{checked_size(self.memory_limit)}'")
            con.execute("SET threads = 1")
            con.execute("SET preserve_insertion_order = false")
            if not read_only:
                con.execute("PRAGMA disable_checkpoint_on_shutdown")
                con.execute(f"SET wal_autocheckpoint = '{WAL_AUTOCHECKPOINT}'")
        except MarketpulseError:
            con.close()
            raise
        except duckdb.Error as exc:
            con.close()
            raise not_duckdb_error(self.db, exc, "--db") from exc
        return con

    def _in_place_of_target(self):
        """A connection for reads before the first write has made the results file: an
        empty in-memory database, which is what a new file would hold, so the checks and
        `--variant auto`'s sample read the source without making the file. It spills
        where a connection on the file would (DuckDB's default is ./.tmp here)."""
        import duckdb

        return duckdb.connect(config={"temp_directory": f"{self.target}.tmp"})

    @property
    def lock_path(self) -> Path:
        # resolved: two runs reaching one file through a link must share one lock
        target = Path(self.target).resolve()
        return target.with_name(target.name + ".marketpulse.lock")

    @contextmanager
    def run_lock(self) -> Iterator[None]:
        """Hold `<results db>.marketpulse.lock` for the run; refuse a second concurrent run.

        A run that fails (or is stopped) before any write session committed leaves the
        folder as it found it: the results file and its write-ahead log, when its first
        write made them, and the lock file, when this run made it, are removed while the
        lock is still held, so no other run is using them. A file that was there before
        the run is never removed, and one that holds a commit stays.
        """
        self._made, self._committed = [], False
        try:
            import fcntl
        except ImportError:  # not POSIX: DuckDB's own lock is all there is
            with self._undone_on_failure(made_lock=False):
                yield
            return
        handle, made_lock = self._take_lock(fcntl)
        try:
            with self._undone_on_failure(made_lock):
                yield
        finally:
            handle.close()

    def _take_lock(self, fcntl) -> tuple[object, bool]:
        """The lock file, opened (made when missing) and flocked; and whether this run made it.

        A run that failed removes the lock file it made, so a file opened just before that
        may be gone from the folder by the time it is locked: then it is opened again, so
        that every run locks the file the folder holds.
        """
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                made = True
            except FileExistsError:
                try:
                    fd = os.open(self.lock_path, os.O_RDWR)
                except FileNotFoundError:  # removed meanwhile: make it
                    continue
                except OSError as exc:
                    raise self._lock_error(exc) from exc
                made = False
            except OSError as exc:  # a folder this user cannot write, a read-only mount
                raise self._lock_error(exc) from exc
            handle = os.fdopen(fd, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                handle.close()
                raise MarketpulseError(
                    f"another `marketpulse score` is writing to {self.target}; wait for it to "
                    "finish, or score into another file with --results-db"
                ) from exc
            if _same_file(handle.fileno(), self.lock_path):
                return handle, made
            handle.close()

    def _lock_error(self, exc: OSError) -> MarketpulseError:
        return MarketpulseError(
            f"cannot open the run lock {self.lock_path} ({exc.strerror or exc}); score into "
            "a folder this user can write, or pass another --results-db"
        )

    @contextmanager
    def _undone_on_failure(self, made_lock: bool) -> Iterator[None]:
        """On an error (or a signal) before any commit, remove the files this run made."""
        try:
            yield
        except BaseException:
            if not self._committed:
                for path in self._made + ([self.lock_path] if made_lock else []):
                    with contextlib.suppress(OSError):  # the run's own error is the one to see
                        path.unlink()
            raise

    @contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A new folder beside the results file, holding its `owner.lock` flocked; removed,
        then released, at the end."""
        with owned_folder(self.target.parent, STAGE_PREFIX, _MAKING_PREFIX) as path:
            yield path

    def remove_stale_staging(self) -> tuple[int, int]:
        """Remove the staging folders beside the results file whose run is dead; return
        (removed, kept because their run cannot be told). Call it holding the run lock.

        One without `owner.lock` (an older marketpulse made it) holding only staged shards
        was made by a run that held a run lock in this folder: when ours is the only one
        there, that run scored this database and is dead, since we hold its lock; else it
        is kept.
        """
        return remove_dead_folders(
            self.target.parent, STAGE_PREFIX, without_lock=self._older_staging_is_dead
        )

    def _older_staging_is_dead(self, folder: Path) -> bool:
        """A folder without a lock file: staged shards only, and no run lock beside ours."""
        try:
            if not all(f.name.startswith("pending-") and f.is_file() for f in folder.iterdir()):
                return False
            locks = list(folder.parent.glob("*.marketpulse.lock"))
        except OSError:
            return False
        if self.lock_path.parent != folder.parent.resolve():
            return False  # the results file is a link: its lock is elsewhere, nothing proves it
        return all(lock.resolve() == self.lock_path for lock in locks)


def _wal(path: Path) -> Path:
    """DuckDB's write-ahead log of the database file `path`."""
    return path.with_name(path.name + ".wal")


def _same_file(fd: int, path: Path) -> bool:
    """Whether the file open at `fd` is the one at `path` (not removed or replaced)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
