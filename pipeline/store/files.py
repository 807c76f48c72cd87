"""File-level primitives of a store: its error, atomic writes, removal, and the digests of files and arrays."""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import numpy as np


class StoreError(RuntimeError):
    """A store is missing, damaged, inconsistent, or asked for something it does not hold."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def file_digest(path: str | os.PathLike) -> str:
    """Content digest of one file (SHA-256, 128 bits as hex): hardware-accelerated on current CPUs."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:32]


def array_digest(arr: np.ndarray) -> str:
    """Digest of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(a.reshape(-1).view(np.uint8).tobytes() if a.size else b"")
    return h.hexdigest()[:32]
