"""Cache keys: canonical hashes of what determines a result; file digests memoized by size+mtime."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

_DIGEST_BLOCK = 1 << 20
log = logging.getLogger(__name__)


def canonical(obj: Any) -> str:
    """A canonical JSON text for `obj`: sorted keys, no whitespace, tuples as lists."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


def hash_key(obj: Any, length: int = 16) -> str:
    """A short stable hex key for `obj`."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:length]


def _hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_DIGEST_BLOCK):
            h.update(block)
    return h.hexdigest()


class DigestMemo:
    """Content digests of files, recomputed only when a file's size or mtime changes.

    Backed by SQLite so that concurrent runs on one cache share it safely. On a cache this process cannot
    write (a read-only mount, another user's cache) the memo is read as it is and new digests are only
    kept in memory.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._readonly = False
        self._memory: dict[str, tuple[int, int, str]] = {}
        self._rows: dict[str, tuple[int, int, str]] | None = None  # the database's rows, read on first use
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            c = self._conn()
            with c:
                c.execute("CREATE TABLE IF NOT EXISTS files "
                          "(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, digest TEXT)")
            c.execute("BEGIN IMMEDIATE")  # can this process write here (a file of another user's, say)?
            c.execute("ROLLBACK")
        except (OSError, sqlite3.Error):
            self._readonly = True
            self._local = threading.local()

    def _conn(self) -> sqlite3.Connection | None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._readonly:
                if not self.path.exists():
                    return None
                try:  # immutable: no locks and no -wal/-shm files, which a read-only mount cannot hold
                    conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?immutable=1", uri=True)
                    conn.execute("SELECT 1 FROM files LIMIT 1")
                except sqlite3.Error:
                    return None
            else:
                conn = sqlite3.connect(self.path, timeout=60)
                conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def _known(self, conn: sqlite3.Connection) -> dict[str, tuple[int, int, str]]:
        """Every memoized row, read once: a manifest of 10,000 files asks 10,000 times."""
        known = self._rows
        if known is None:
            try:
                known = {r[0]: tuple(r[1:]) for r in conn.execute("SELECT path, size, mtime_ns, digest FROM files")}
            except sqlite3.Error:  # an immutable view of a file someone is writing: hash instead
                known = {}
            self._rows = known
        return known

    def digest(self, path: str | os.PathLike) -> str:
        """Digest of the file's content, or a marker for a missing or unreadable file."""
        sp = os.fspath(path)
        if not (isinstance(path, Path) and path.is_absolute()):  # a manifest's paths are: no parsing per clip
            sp = str(Path(sp).absolute())
        try:
            st = os.stat(sp)
        except OSError:
            return f"missing:{sp}"
        conn = self._conn()
        row = self._memory.get(sp)
        if row is None and conn is not None:
            row = self._known(conn).get(sp)
        if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
            return row[2]
        p = Path(sp)
        try:
            d = _hash_file(p)
        except OSError as e:
            return f"unreadable:{p}:{e.errno}"
        if not self._readonly:
            try:
                with conn:
                    conn.execute("INSERT OR REPLACE INTO files VALUES (?,?,?,?)",
                                 (sp, st.st_size, st.st_mtime_ns, d))
                self._known(conn)[sp] = (st.st_size, st.st_mtime_ns, d)
                return d
            except sqlite3.OperationalError as e:  # locked past the timeout, or read-only after all
                log.debug("digest memo %s not updated: %s", self.path, e)
        self._memory[sp] = (st.st_size, st.st_mtime_ns, d)
        return d


def key_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """`params` as they enter a cache key: a param added to a Config after its stores or runs were cached
    (listed in the Config's KEY_NEUTRAL with the value that keeps the old behaviour) is left out at that
    value, so adding it does not invalidate every existing cache entry."""
    neutral = getattr(cls, "KEY_NEUTRAL", {})
    return {k: v for k, v in params.items() if not (k in neutral and v == neutral[k])}
