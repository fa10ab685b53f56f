"""Folders owned by a live process: made beside a file, swept once their process is dead.

A run stages work in a folder of its own (a view's pending rows beside the results file,
the Ray engine's shards, trends' scratch tables, train's and export's output built beside
--out, export's graphs in the temp folder); a killed run cannot remove it. So each
folder holds an `owner.lock` (`STAGE_OWNER`) that its process keeps flocked while the
folder exists (`owned_folder`), and a later run removes the folders whose lock nobody
holds, and only those (`remove_dead_folders`): a killed process releases its locks with
its file descriptors. The lock file names its host, and only this host's folders are
judged, since a flock on a network filesystem may be visible on its own host only.

A folder is `<prefix><random>`, the random part `tempfile.mkdtemp`'s (8 characters), and
the sweep takes those exact names only: the prefix `.model.train-` of --out `model` is also
the start of `.model.train-b.train-*`, --out `model.train-b`'s, which are not its to judge.
`sweep_dead_runs` is that sweep with a line per folder removed (its size and owner's
pid), and one for folders made by an older marketpulse, which are kept.

A folder is removed lock file last (`remove_owned`), by its run and by the sweep alike: a
removal cut short (kill -9 mid-way) leaves a folder that still has its lock, which the next
sweep removes, never one without a lock, which it would keep as an older marketpulse's.

A run removes its folders in `finally` blocks, which Ctrl-C (KeyboardInterrupt) runs but
SIGTERM, a scheduler's timeout, does not: the process just ends. `stop_on_sigterm` raises
`Terminated` (a KeyboardInterrupt) in the main thread instead, so SIGTERM cleans up as
Ctrl-C does, then prints what --out holds and exits 143; train, adapt and export run in it.
Further SIGTERMs (a scheduler may send several before its SIGKILL) are ignored once the
cleanup has started (an owned folder's removal, or `stop_on_sigterm`'s own), so they cannot
cut the removal short; one that came during a removal already under way (an error's) is
finished before the line says the folders were removed. Until then each SIGTERM raises:
a `Terminated` swallowed where Python ignores exceptions (a `__del__`, a weakref or GC
callback: "Exception ignored in ...") starts no cleanup, and must not leave SIGTERM
ignored for the rest of the run.
`score` stops gracefully on its own (runs.py).

This module knows nothing of DuckDB: runtime's database.py and ray_engine.py, trends'
stage.py, train's out_dir.py and adapt.py and export's stage.py choose the folders' parent
and prefixes; staging.py's `replace_dir` moves the folder it swaps out of --out into one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from marketpulse.errors import MarketpulseError

STAGE_OWNER = "owner.lock"
# tempfile.mkdtemp's random part, which an owned folder's name ends with: 8 characters of
# "abcdefghijklmnopqrstuvwxyz0123456789_" (CPython's tempfile._RandomNameSequence)
RANDOM_PART = r"[a-z0-9_]{8}"
# flock's errors on a filesystem without locks: there the folder goes unlocked, and the
# sweep, unable to lock it either, takes it for a live run's and keeps it
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
# this process's owned folders (both names) whose removal has not ended: those of a
# block SIGTERM stopped are finished by `stop_on_sigterm` if a signal cut their removal short
_UNREMOVED: set[Path] = set()


@contextmanager
def owned_folder(parent: Path, prefix: str, making_prefix: str | None = None) -> Iterator[Path]:
    """A new folder `parent/<prefix><random>` holding an `owner.lock` this process keeps
    flocked until the folder is removed (lock file last: `remove_owned`), at the end. It is
    made as `<making_prefix><random>` and renamed once locked, so a folder under `prefix`
    always has its lock file. A lock another process holds stops the run
    (MarketpulseError): that process could remove the folder while it is in use."""
    if making_prefix is None:  # `.x.train-` is made as `.x.train~`
        making_prefix = prefix[:-1] + "~"
    making = Path(tempfile.mkdtemp(prefix=making_prefix, dir=parent))
    path = making.with_name(prefix + making.name.removeprefix(making_prefix))
    names = (making, path)
    _UNREMOVED.update(names)
    owner = None
    try:
        owner = open(making / STAGE_OWNER, "w")  # noqa: SIM115 - held while staged
        _lock_new(owner)
        # the host: a flock on a network filesystem may be visible on this host only
        owner.write(f"{os.getpid()} {socket.gethostname()}\n")
        owner.flush()
        making.rename(path)
        yield path
    except Terminated:
        sigterm_cleanup_started()  # the removal below runs to its end
        raise
    finally:
        remove_owned(path)
        remove_owned(making)
        _UNREMOVED.difference_update(name for name in names if not os.path.lexists(name))
        if owner is not None:
            owner.close()


def _lock_new(owner) -> None:
    """Flock the new `owner.lock` open as `owner`, as database.py's run lock is taken: held
    by another process, it is an error; a filesystem without locks is let be."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locks here, and no sweep either
        return
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return
        held = isinstance(exc, BlockingIOError) or exc.errno in (errno.EAGAIN, errno.EACCES)
        why = "another process holds it" if held else (exc.strerror or str(exc))
        raise MarketpulseError(
            f"cannot lock {owner.name}, the owner lock of a new working folder ({why}); "
            "without it another run could remove the folder while this one uses it: retry, "
            "or use a folder on a local filesystem"
        ) from exc


def remove_owned(folder: Path) -> None:
    """Remove an `owned_folder`: everything in it but `owner.lock` first, then the lock
    file, then the folder. Cut short (a signal, kill -9), the removal leaves a folder that
    still has its lock file, which the next sweep judges (its run is dead: removed), never
    one without, which it would keep as an older marketpulse's. Errors are ignored: what
    could not be removed is left with its lock file, for a later sweep."""
    try:
        entries = [entry for entry in folder.iterdir() if entry.name != STAGE_OWNER]
    except OSError:  # gone already
        return
    for entry in entries:
        _remove(entry)
    try:
        if any(entry.name != STAGE_OWNER for entry in folder.iterdir()):
            return  # something could not be removed: the lock file stays with it
    except OSError:
        return
    with contextlib.suppress(OSError):
        (folder / STAGE_OWNER).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def remove_dead_folders(
    parent: Path,
    prefix: str,
    *,
    between: str = "",
    without_lock: Callable[[Path], bool] | None = None,
    on_removed: Callable[[Path, int | None, int], None] | None = None,
) -> tuple[int, int]:
    """Remove the `owned_folder`s `parent/<prefix><random>` whose process is dead; return
    (removed, kept because their owner cannot be told). Only names `prefix`, then what the
    regular expression `between` matches (ray_engine.py's run id), then mkdtemp's random
    part are judged: those of a longer prefix (another --out's) are not this sweep's.

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
        remove_owned(folder)  # the lock file last: one cut short is still judged dead
        if not folder.exists():
            removed += 1
            if on_removed is not None:
                on_removed(folder, pid, size)

    # exact names: `prefix` (escaped: a prefix naming --out may hold [ ] * ?) + mkdtemp's part
    name = re.compile(re.escape(prefix) + between + RANDOM_PART)
    try:
        folders = sorted(path for path in Path(parent).iterdir() if name.fullmatch(path.name))
    except OSError:  # no such folder: nothing to sweep
        folders = []
    for folder in folders:
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
    """`remove_dead_folders` on `parent/<prefix><random>`, logging one line per folder removed
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


# whether the cleanup a `Terminated` started is under way (`sigterm_cleanup_started`):
# from then on the `sigterm_raises` block ignores SIGTERM
_CLEANING = {"started": False}


def sigterm_cleanup_started() -> None:
    """Say that the cleanup a `Terminated` started is under way: further SIGTERMs are
    ignored to the end of the `sigterm_raises` block, so a scheduler's second one cannot
    cut it short. Called where a `Terminated` is caught to clean up (`owned_folder`,
    `stop_on_sigterm`), not by the handler: a `Terminated` raised in a `__del__` or a GC
    callback is swallowed ("Exception ignored in ...") and starts no cleanup."""
    _CLEANING["started"] = True


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises `Terminated` in the main thread (elsewhere,
    where no handler can be set, the block runs as it is); the handler before is put back.
    The handler stays set: each SIGTERM raises until `sigterm_cleanup_started`, and is
    ignored from then to the block's end. (Setting SIG_IGN on the first one would leave
    SIGTERM ignored for the rest of the run if that `Terminated` were swallowed.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _CLEANING["started"]:
            return  # the cleanup an earlier one started runs to its end
        raise Terminated(signal.Signals(signum).name)

    outer = _CLEANING["started"]
    _CLEANING["started"] = False
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        _CLEANING["started"] = outer


@contextmanager
def stop_on_sigterm(out: Path, what: str) -> Iterator[None]:
    """A command writing `what` (a checkpoint, a bundle) to --out `out`: on SIGTERM the
    block's `finally` blocks remove its folders (`sigterm_raises`; one whose removal the
    signal cut short is finished here), then one line says it was interrupted and what
    --out holds, and the process exits 143."""
    before = _identity(out)
    held = before is not None and _holds_something(out)
    earlier = set(_UNREMOVED)  # folders of enclosing blocks are not this block's to remove
    with sigterm_raises():
        try:
            yield
        except Terminated:
            sigterm_cleanup_started()  # further SIGTERMs are ignored from here
            left = _finish_removal(_UNREMOVED - earlier)
            after = _identity(out)
            if after is not None and after != before:  # swapped into place just before
                line, folders = f"after the {what} was written to --out {out}", ""
            else:
                kept = " (it keeps what it held before)" if held else ""
                line = f"before the {what} was complete: nothing was written to --out {out}{kept}"
                folders = "; this run's temporary folders were removed"
            if left:
                folders = "; this run's temporary folders could not all be removed: " + ", ".join(
                    str(folder) for folder in left
                )
            print(
                f"marketpulse: interrupted by SIGTERM {line}{folders}", file=sys.stderr, flush=True
            )
            raise SystemExit(Terminated.exit_code) from None


def _finish_removal(folders: set[Path]) -> list[Path]:
    """Remove the owned `folders` a signal left half-removed; return those still there."""
    for folder in sorted(folders):
        remove_owned(folder)
        if not os.path.lexists(folder):
            _UNREMOVED.discard(folder)
    return sorted(folder for folder in folders if os.path.lexists(folder))


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
