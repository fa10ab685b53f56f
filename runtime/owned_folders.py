"""Folders owned by a live process: made beside a file, swept once their process is dead.

A run stages work in a folder of its own (a view's pending rows beside the results file,
the Ray engine's shards, trends' scratch tables, train's and export's output built beside
--out, export's graphs in the temp folder); a killed run cannot remove it. So each
folder holds an `owner.lock` (`STAGE_OWNER`) that its process keeps flocked while the
folder exists (`owned_folder`), and a later run removes the folders whose lock nobody
holds, and only those (`remove_dead_folders`): a killed process releases its locks with
its file descriptors. The lock file names its host, and only this host's folders are
judged, since a flock on a network filesystem may be visible on its own host only.

`sweep_dead_runs` is that sweep with a line per folder removed (its size and owner's
pid), and one for folders made by an older marketpulse, which are kept.

A run removes its folders in `finally` blocks, which Ctrl-C (KeyboardInterrupt) runs but
SIGTERM, a scheduler's timeout, does not: the process just ends. `stop_on_sigterm` raises
`Terminated` (a KeyboardInterrupt) in the main thread instead, so SIGTERM cleans up as
Ctrl-C does, then prints what --out holds and exits 143; train, adapt and export run in it.
`score` stops gracefully on its own (runs.py).

This module knows nothing of DuckDB: database.py, ray_engine.py, trends' stage.py,
train's out_dir.py and adapt.py and export's stage.py choose the folders' parent and
prefixes.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STAGE_OWNER = "owner.lock"


@contextmanager
def owned_folder(parent: Path, prefix: str, making_prefix: str) -> Iterator[Path]:
    """A new folder `parent/<prefix>...` holding an `owner.lock` this process keeps
    flocked until the folder is removed, at the end. It is made as `<making_prefix>...`
    and renamed once locked, so a folder under `prefix` always has its lock file."""
    making = Path(tempfile.mkdtemp(prefix=making_prefix, dir=parent))
    path = making.with_name(prefix + making.name.removeprefix(making_prefix))
    owner = None
    try:
        owner = open(making / STAGE_OWNER, "w")  # noqa: SIM115 - held while staged
        try:
            import fcntl

            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody holds it
        except (ImportError, OSError):  # not POSIX, or a filesystem without flock: the
            pass  # lock is free to whoever looks, and our folder may be swept; ours is new
        # the host: a flock on a network filesystem may be visible on this host only
        owner.write(f"{os.getpid()} {socket.gethostname()}\n")
        owner.flush()
        making.rename(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(making, ignore_errors=True)
        if owner is not None:
            owner.close()


def remove_dead_folders(
    parent: Path,
    prefix: str,
    *,
    without_lock: Callable[[Path], bool] | None = None,
    on_removed: Callable[[Path, int | None, int], None] | None = None,
) -> tuple[int, int]:
    """Remove the `owned_folder`s `parent/<prefix>*` whose process is dead; return
    (removed, kept because their owner cannot be told).

    A folder whose `owner.lock` can be locked belongs to a dead process (a killed one
    releases its locks with its file descriptors); one whose lock is held is alive and
    kept. Only this host's folders are judged: on a shared (network) folder another
    host's lock may not be visible here, so its folders are kept. `without_lock(folder)`
    says whether a folder without a lock file is dead (default: it cannot be told; kept).
    `on_removed(folder, owner's pid or None, bytes)` is called for each folder removed.
    """
    try:
        import fcntl
    except ImportError:
        return 0, 0
    removed = kept = 0

    def remove(folder: Path, pid: int | None) -> None:
        nonlocal removed
        size = _size(folder) if on_removed is not None else 0
        # the lock file last: a removal cut short (a signal) leaves a folder still judged dead
        try:
            entries = [entry for entry in folder.iterdir() if entry.name != STAGE_OWNER]
        except OSError:
            entries = []
        for entry in entries:
            _remove(entry)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed += 1
            if on_removed is not None:
                on_removed(folder, pid, size)

    # escaped: a prefix naming --out may hold [ ] * ?
    for folder in sorted(Path(parent).glob(glob.escape(prefix) + "*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:  # read-write: NFS emulates flock with byte-range locks, which need it
            fd = _open_owner(folder / STAGE_OWNER)
        except FileNotFoundError:
            if without_lock is not None and without_lock(folder):
                remove(folder, None)
            else:
                kept += 1
            continue
        except OSError:  # another user's folder, say
            continue
        if not _made_here(fd):  # judged by a run on its own host, not counted here
            os.close(fd)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its run is alive
            os.close(fd)
            continue
        try:  # removed while locked: no other run can take it meanwhile
            remove(folder, _owner_pid(fd))
        finally:
            os.close(fd)
    return removed, kept


def sweep_dead_runs(parent: Path, prefix: str, log: Callable[[str], None]) -> None:
    """`remove_dead_folders` on `parent/<prefix>*`, logging one line per folder removed
    (`removed 350 MB left by a dead run (pid 1234): PATH`), and one naming the folders
    without a lock file, which are kept: an older marketpulse made them, and whether its
    run is alive cannot be told."""
    older: list[Path] = []

    def removed(folder: Path, pid: int | None, size: int) -> None:
        owner = f" (pid {pid})" if pid is not None else ""
        log(f"removed {_amount(size)} left by a dead run{owner}: {folder}")

    def without_lock(folder: Path) -> bool:
        older.append(folder)
        return False

    remove_dead_folders(parent, prefix, without_lock=without_lock, on_removed=removed)
    if older:
        listed = ", ".join(f"{folder} ({_amount(_size(folder))})" for folder in older)
        log(
            f"kept {len(older)} folder(s) an older marketpulse left, without an {STAGE_OWNER} "
            f"to tell whether their run is alive; remove them once no run uses them: {listed}"
        )


def _owner_pid(fd: int) -> int | None:
    """The pid an `owner.lock` open at `fd` names."""
    words = _owner_words(fd)
    return int(words[0]) if words and words[0].isdigit() else None


def _made_here(fd: int) -> bool:
    """Whether the `owner.lock` open at `fd` names this host (one without a host, from
    before hosts were written, counts as this host's)."""
    words = _owner_words(fd)
    return words is not None and (len(words) < 2 or words[1] == socket.gethostname())


def _owner_words(fd: int) -> list[str] | None:
    """The `owner.lock` open at `fd`: [pid, host], or None when it cannot be read."""
    try:
        return os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    except OSError:
        return None


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


def _size(folder: Path) -> int:
    """The bytes of the files under `folder` (links not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _amount(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt, so the
    `finally` blocks that remove a run's folders run on a scheduler's timeout too."""

    signum = signal.SIGTERM
    exit_code = 128 + signal.SIGTERM  # the shell's convention, as `score` exits: 143


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises `Terminated` in the main thread (elsewhere,
    where no handler can be set, the block runs as it is); the handler before is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def stop_on_sigterm(out: Path, what: str) -> Iterator[None]:
    """A command writing `what` (a checkpoint, a bundle) to --out `out`: on SIGTERM the
    block's `finally` blocks remove its folders (`sigterm_raises`), then one line says it
    was interrupted and what --out holds, and the process exits 143."""
    before = _identity(out)
    held = before is not None and _holds_something(out)
    try:
        with sigterm_raises():
            yield
    except Terminated:
        after = _identity(out)
        if after is not None and after != before:  # swapped into place just before
            line = f"after the {what} was written to --out {out}"
        else:
            kept = " (it keeps what it held before)" if held else ""
            line = (
                f"before the {what} was complete: nothing was written to --out {out}{kept}; "
                "this run's temporary folders were removed"
            )
        print(f"marketpulse: interrupted by SIGTERM {line}", file=sys.stderr, flush=True)
        raise SystemExit(Terminated.exit_code) from None


def _holds_something(folder: Path) -> bool:
    try:
        return any(Path(folder).iterdir())
    except OSError:
        return False


def _identity(folder: Path) -> tuple[int, int] | None:
    """The directory at `folder` (a link followed) as (device, inode); None if there is none."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(folder) else None


def _open_owner(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR)
    except PermissionError:  # another user's: a shared lock is all it may take
        return os.open(path, os.O_RDONLY)
