"""Folders owned by a live process: made beside a file, swept once their process is dead.

A run stages work in a folder of its own (a view's pending rows beside the results file,
the Ray engine's shards, trends' scratch tables); a killed run cannot remove it. So each
folder holds an `owner.lock` (`STAGE_OWNER`) that its process keeps flocked while the
folder exists (`owned_folder`), and a later run removes the folders whose lock nobody
holds, and only those (`remove_dead_folders`): a killed process releases its locks with
its file descriptors. The lock file names its host, and only this host's folders are
judged, since a flock on a network filesystem may be visible on its own host only.

This module knows nothing of DuckDB: database.py, ray_engine.py and trends' stage.py
choose the folders' parent and prefixes.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
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
    parent: Path, prefix: str, *, without_lock: Callable[[Path], bool] | None = None
) -> tuple[int, int]:
    """Remove the `owned_folder`s `parent/<prefix>*` whose process is dead; return
    (removed, kept because their owner cannot be told).

    A folder whose `owner.lock` can be locked belongs to a dead process (a killed one
    releases its locks with its file descriptors); one whose lock is held is alive and
    kept. Only this host's folders are judged: on a shared (network) folder another
    host's lock may not be visible here, so its folders are kept. `without_lock(folder)`
    says whether a folder without a lock file is dead (default: it cannot be told; kept).
    """
    try:
        import fcntl
    except ImportError:
        return 0, 0
    removed = kept = 0
    for folder in sorted(Path(parent).glob(prefix + "*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:  # read-write: NFS emulates flock with byte-range locks, which need it
            fd = _open_owner(folder / STAGE_OWNER)
        except FileNotFoundError:
            if without_lock is not None and without_lock(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed += not folder.exists()
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
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
        removed += not folder.exists()
    return removed, kept


def _made_here(fd: int) -> bool:
    """Whether the `owner.lock` open at `fd` names this host (one without a host, from
    before hosts were written, counts as this host's)."""
    try:
        words = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    except OSError:
        return False
    return len(words) < 2 or words[1] == socket.gethostname()


def _open_owner(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR)
    except PermissionError:  # another user's: a shared lock is all it may take
        return os.open(path, os.O_RDONLY)
