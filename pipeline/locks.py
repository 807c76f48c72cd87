"""Inter-process locks of the cache: a store's writer lock (exclusive), its use lock (shared by every run
that produces or reads the store, taken exclusively by `gc`), and a run directory's lock."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from .context import cache_paths

log = logging.getLogger(__name__)


def _lock_path(cache: Path, store_path: Path, suffix: str = ".lock", make: bool = True) -> Path:
    path = cache_paths(cache)["locks"] / store_path.parent.name / f"{store_path.name}{suffix}"
    if make:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def store_lock(cache: Path, store_path: Path) -> Any:
    """The exclusive inter-process lock of one store's writer (released by the OS if its holder dies)."""
    from filelock import FileLock

    return FileLock(str(_lock_path(cache, store_path)))


@contextlib.contextmanager
def in_use(cache: Path, store_path: Path) -> Iterator[None]:
    """Hold a shared lock on a store while a run produces or reads it, so that `gc` leaves it alone. Where
    no lock file can be made (a read-only cache) none is taken: gc cannot remove anything there either."""
    import fcntl

    fd = _open_lock(cache, store_path)
    if fd is None:
        log.debug("no use lock for %s (read-only cache?)", store_path)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock(cache: Path, store_path: Path) -> int | None:
    """A descriptor on a store's use-lock file: created if need be, else opened read-only (flock needs no
    write access, and on a shared cache another user may own the file); None where neither works."""
    try:
        return os.open(_lock_path(cache, store_path, ".use"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        try:
            return os.open(_lock_path(cache, store_path, ".use", make=False), os.O_RDONLY)
        except OSError:
            return None


@contextlib.contextmanager
def unused(cache: Path, store_path: Path) -> Iterator[bool]:
    """Take a store's use lock exclusively without waiting: yields False when some run holds it."""
    import fcntl

    fd = _open_lock(cache, store_path)
    if fd is None:  # no lock file, and none can be made: no run holds a lock on it
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def acquire(lock: Any, what: str, on_wait: Callable[[str], None] | None) -> None:
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        msg = f"{what}: another run holds {lock.lock_file}; waiting for it to finish"
        log.info(msg)
        if on_wait:
            on_wait(msg)
        lock.acquire()




def run_lock_path(cache: Path, run_dir: Path) -> Path:
    """The lock file of a run directory (runs/<dataset>/<stage>-<key>), its folder made."""
    path = cache_paths(cache)["locks"] / "runs" / run_dir.parent.name / f"{run_dir.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def run_lock(cache: Path, run_dir: Path, what: str,
             on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold a run directory's lock (a complete run, metrics.json written, is never written again: no lock)."""
    from filelock import FileLock

    if (run_dir / "metrics.json").exists():
        yield
        return
    lock = FileLock(str(run_lock_path(cache, run_dir)))
    acquire(lock, what, on_wait)
    try:
        yield
    finally:
        lock.release()
