"""Writing a store: `StoreWriter` creates it and commits shards into it (data first, its record last), and keeps
its records current (format-1 records adopted, moved shards taken over, damage marked, mtimes refreshed)."""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..media.common import is_transient
from .backends import _shard_suffixes, get_backend
from .files import StoreError, _atomic_write_text, _remove, file_digest
from .records import _SELF, ATTRS_FILE, FORMAT_VERSION, _integrity, _record_text, read_attrs
from .scan import StoreScan, _orphans, scan_store

log = logging.getLogger(__package__)  # the store's one logger: its messages keep the name they always had


@dataclass(frozen=True)
class ClipResult:
    """One clip's outcome inside a shard: an array, or a failure reason."""

    clip_id: str
    key: str
    array: np.ndarray | None = None
    reason: str | None = None


class StoreWriter:
    """Creates a store and commits shards into it; each shard has exactly one writer."""

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any] | None = None,
                 backend: str = "zarr") -> None:
        self.path = Path(path)
        (self.path / "shards").mkdir(parents=True, exist_ok=True)
        (self.path / "commits").mkdir(exist_ok=True)
        attrs_path = self.path / ATTRS_FILE
        found, problem = read_attrs(self.path)
        if found is not None:
            self.attrs = found
            if attrs is not None and attrs.get("key") not in (None, self.attrs.get("key")):
                raise StoreError(f"store {self.path} holds key {self.attrs.get('key')}, "
                                 f"not {attrs.get('key')}; refusing to mix results")
        else:
            if attrs is None:
                raise StoreError(f"no store at {self.path} ({problem}); pass attrs to create one")
            if attrs_path.exists():
                log.warning("store %s: %s; rewritten from the stage's definition", self.path, problem)
            self.attrs = {**attrs, "format_version": FORMAT_VERSION, "layout": "csr", "backend": backend,
                          "created": time.time()}
            _atomic_write_text(attrs_path, json.dumps(self.attrs, indent=2, sort_keys=True))
        self.backend = get_backend(self.attrs["backend"])

    def clean_temporaries(self) -> int:
        """Remove temporaries and orphaned shard files left by killed writers; call only while holding the store
        lock."""
        n = 0
        for sub in ("shards", "commits"):
            for p in (self.path / sub).glob(".tmp-*"):
                _remove(p)
                n += 1
        for p in _orphans(self.path):  # under the lock no writer is between its rename and its commit
            _remove(p)
            n += 1
        return n

    def discard(self, shard_id: str) -> None:
        """Remove a shard, its commit record and any damage mark (before recomputing it)."""
        (self.path / "commits" / f"{shard_id}.json").unlink(missing_ok=True)
        for suffix in _shard_suffixes():
            _remove(self.path / "shards" / f"{shard_id}{suffix}")  # exact names: an id is never a pattern
        (self.path / "damaged" / f"{shard_id}.json").unlink(missing_ok=True)

    def mismatch(self, array: np.ndarray) -> str | None:
        """Why `array` cannot go into this store (rows of other dims, another dtype), or None."""
        dims, dtype = self.attrs.get("dims"), self.attrs.get("dtype")
        if dims is not None and list(array.shape[1:]) != list(dims):
            return f"rows of shape {list(array.shape[1:])}, but this store's rows are {list(dims)} (its dims)"
        if dtype is not None and str(array.dtype) != dtype:
            return f"dtype {array.dtype}, but this store holds {dtype}"
        return None

    def write_shard(self, shard_id: str, results: Sequence[ClipResult]) -> dict[str, Any]:
        """Write the shard's arrays, then its commit record; return the record. A write that fails leaves
        no shard and no record behind."""
        ok = [r for r in results if r.array is not None]
        arrays = [r.array for r in ok if r.array is not None]  # the same rows, typed
        dims, dtype = self.attrs.get("dims"), self.attrs.get("dtype")
        for r, a in zip(ok, arrays):
            why = self.mismatch(a)
            if why:
                raise StoreError(f"clip {r.clip_id}: {why}")
        lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if ok:
            data = np.ascontiguousarray(np.concatenate(arrays, axis=0))
        else:
            data = np.zeros((0, *(dims or [])), dtype=dtype or "float32")

        final = self.path / "shards" / f"{shard_id}{self.backend.suffix}"
        tmp = final.with_name(f".tmp-{shard_id}-{uuid.uuid4().hex[:8]}{self.backend.suffix}")
        try:
            self.backend.write(tmp, data, offsets)
            integrity = _integrity(tmp, data, offsets)  # renaming keeps sizes and mtimes
        except BaseException:
            _remove(tmp)
            raise
        self.discard(shard_id)  # an earlier writer died between rename and commit, or a damaged shard
        commit = self.path / "commits" / f"{shard_id}.json"
        try:
            os.replace(tmp, final)
            record = {
                "format": FORMAT_VERSION,
                "shard": shard_id,
                "file": final.name,
                "store_key": self.attrs.get("key"),
                "created": time.time(),
                "clips": [{"id": r.clip_id, "key": r.key, "start": int(offsets[i]), "stop": int(offsets[i + 1])}
                          for i, r in enumerate(ok)],
                "failed": [{"id": r.clip_id, "key": r.key, "reason": r.reason, "transient": is_transient(r.reason or "")}
                           for r in results if r.array is None],
                **integrity,
            }
            _atomic_write_text(commit, _record_text(record))
        except BaseException:  # e.g. the disk filled up writing the record: leave no uncommitted shard
            _remove(tmp)
            if not commit.exists():  # (the old record was discarded above: one that exists now is this one)
                _remove(final)
            raise
        return record

    def adopt(self, record: dict[str, Any]) -> dict[str, Any]:
        """Rewrite a format-1 record (no integrity data) with digests of what its shard holds now, after
        checking that the shard reads back with the row ranges the record states."""
        shard = self.path / "shards" / record["file"]
        offsets = self.backend.read_offsets(shard)
        data = np.asarray(self.backend.open(shard)[...])
        bounds = [0] + [c["stop"] for c in record["clips"]]
        if list(offsets) != bounds or data.shape[0] != bounds[-1]:
            raise StoreError(f"shard {record['shard']}: its offsets do not match its commit record")
        new = {**record, "format": FORMAT_VERSION, "store_key": self.attrs.get("key"),
               **_integrity(shard, data, offsets)}
        _atomic_write_text(self.path / "commits" / f"{record['shard']}.json", _record_text(new))
        return new

    def take_shard(self, source: Path, record: dict[str, Any], rename: dict[str, str]) -> dict[str, Any]:
        """Move a committed shard of the store at `source` (a dataset's store from before rows were keyed by
        content) into this one, its entries renamed (`rename`: clip key -> row key; other entries, stale keys,
        keep theirs, so the row ranges still add up) and its record rewritten for this store. Nothing is
        recomputed; the files keep their mtimes, so the record's integrity data still holds. Killed midway, one
        shard is left unreadable on one side, found as damage (or an orphan) and recomputed."""
        final = self.path / "shards" / record["file"]
        self.discard(record["shard"])
        os.replace(source / "shards" / record["file"], final)

        def renamed(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{**e, "id": rename[e["key"]], "key": rename[e["key"]]} if e["key"] in rename else e for e in entries]

        new = {**record, "store_key": self.attrs.get("key"), "clips": renamed(record["clips"]),
               "failed": renamed(record["failed"])}
        _atomic_write_text(self.path / "commits" / f"{record['shard']}.json", _record_text(new))
        (source / "commits" / f"{record['shard']}.json").unlink(missing_ok=True)
        return new

    def mark_damaged(self, shard_id: str, reason: str, checksum: str | None) -> None:
        """Record that the shard committed with `checksum` is damaged, so that `status` says so and the next
        run recomputes it (a shard recomputed meanwhile has another checksum: the mark does not apply)."""
        (self.path / "damaged").mkdir(exist_ok=True)
        _atomic_write_text(self.path / "damaged" / f"{shard_id}.json", json.dumps(
            {"shard": shard_id, "reason": reason, "checksum": checksum, "found": time.time()}))

    def refresh(self, record: dict[str, Any]) -> None:
        """Record the current mtimes of a shard whose files were checked against their digests (after a
        copy that did not keep mtimes), so that the cheap check stops hashing them."""
        shard = self.path / "shards" / record["file"]
        files = {}
        for name, (size, mtime_ns, digest) in record["files"].items():
            p = shard if name == _SELF else shard / name
            before = os.stat(p)
            if before.st_mtime_ns != mtime_ns and file_digest(p) == digest and os.stat(p) == before:
                mtime_ns = before.st_mtime_ns  # checked again here, under the store lock
            files[name] = [size, mtime_ns, digest]
        new = {**record, "files": files}
        _atomic_write_text(self.path / "commits" / f"{record['shard']}.json", _record_text(new))


def write_failures_log(path: Path, scan: StoreScan | None = None) -> list[dict[str, Any]]:
    """Rewrite failures.jsonl from the trusted commit records (each clip's newest entry: a failure computed
    since, on a retry, is gone); return the failures."""
    scan = scan or scan_store(path)
    failures = [f for _, f in scan.current(None)[1].values()]
    _atomic_write_text(path / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures))
    return failures
