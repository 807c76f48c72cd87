"""Feature stores: per-clip ragged arrays in CSR form, written shard by shard, committed last.

Layout of one store directory::

    attrs.json              how to read the store back (extractor, version, params, dims, dtype, rate)
    shards/<sid>.zarr|.h5   one shard: `data[N_rows, *dims]` chunked along rows, `offsets[n+1]`
    commits/<sid>.json      the shard's commit record, written last: clips, row ranges, failures
    failures.jsonl          a readable copy of every committed failure (clip id, reason)

A shard is trusted only once its commit record exists. The shard data is written under a
temporary name and renamed into place first, so a killed writer leaves at most an orphaned
temporary (cleaned up by the next run) and never a half-written shard that anyone reads.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .registry import STORE_BACKENDS, register_backend

log = logging.getLogger(__name__)

ATTRS_FILE = "attrs.json"
FORMAT_VERSION = 1
_TARGET_CHUNK_BYTES = 4 << 20


class StoreError(RuntimeError):
    """A store is missing, inconsistent, or asked for something it does not hold."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _chunk_rows(row_shape: tuple[int, ...], dtype: np.dtype) -> int:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(1, _TARGET_CHUNK_BYTES // row_bytes)


class _Backend:
    """Writes one shard's flat `data` and `offsets` to a path, and reads them back."""

    name: str
    suffix: str

    def write(self, path: Path, data: np.ndarray, offsets: np.ndarray) -> None:
        raise NotImplementedError

    def open(self, path: Path) -> Any:
        """Return an array-like over the shard's `data` that supports row slicing."""
        raise NotImplementedError

    def to_dask(self, path: Path) -> Any:
        raise NotImplementedError


@register_backend
class ZarrBackend(_Backend):
    name = "zarr"
    suffix = ".zarr"

    def write(self, path: Path, data: np.ndarray, offsets: np.ndarray) -> None:
        import zarr
        from zarr.codecs import BloscCodec

        group = zarr.open_group(str(path), mode="w")
        compressor = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
        rows = _chunk_rows(data.shape[1:], data.dtype)
        arr = group.create_array("data", shape=data.shape, dtype=data.dtype,
                                 chunks=(rows, *data.shape[1:]) if data.ndim else (1,),
                                 compressors=compressor)
        if data.shape[0]:
            arr[...] = data
        off = group.create_array("offsets", shape=offsets.shape, dtype=offsets.dtype,
                                 chunks=offsets.shape if offsets.size else (1,), compressors=compressor)
        off[...] = offsets

    def open(self, path: Path) -> Any:
        import zarr

        return zarr.open_array(str(path / "data"), mode="r")

    def to_dask(self, path: Path) -> Any:
        import dask.array as da

        return da.from_zarr(str(path), component="data")


@register_backend
class HDF5Backend(_Backend):
    name = "hdf5"
    suffix = ".h5"

    def write(self, path: Path, data: np.ndarray, offsets: np.ndarray) -> None:
        import h5py

        rows = _chunk_rows(data.shape[1:], data.dtype)
        with h5py.File(path, "w") as f:
            chunks = (min(rows, max(1, data.shape[0])), *data.shape[1:]) if data.shape[0] else None
            f.create_dataset("data", data=data, chunks=chunks,
                             compression="lzf" if data.shape[0] else None)
            f.create_dataset("offsets", data=offsets)

    def open(self, path: Path) -> Any:
        import h5py

        return h5py.File(path, "r")["data"]

    def to_dask(self, path: Path) -> Any:
        import dask.array as da

        ds = self.open(path)
        return da.from_array(ds, chunks=ds.chunks or ds.shape)


def get_backend(name: str) -> _Backend:
    """Instantiate the store backend registered as `name`."""
    return STORE_BACKENDS.get(name)()


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
        if attrs_path.exists():
            self.attrs = json.loads(attrs_path.read_text())
            if attrs is not None and attrs.get("key") not in (None, self.attrs.get("key")):
                raise StoreError(f"store {self.path} holds key {self.attrs.get('key')}, "
                                 f"not {attrs.get('key')}; refusing to mix results")
        else:
            if attrs is None:
                raise StoreError(f"no store at {self.path}; pass attrs to create one")
            self.attrs = {**attrs, "format_version": FORMAT_VERSION, "layout": "csr", "backend": backend,
                          "created": time.time()}
            _atomic_write_text(attrs_path, json.dumps(self.attrs, indent=2, sort_keys=True))
        self.backend = get_backend(self.attrs["backend"])

    def clean_temporaries(self) -> int:
        """Remove temporaries left by killed writers; call only while holding the store lock."""
        n = 0
        for sub in ("shards", "commits"):
            for p in (self.path / sub).glob(".tmp-*"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                n += 1
        return n

    def mismatch(self, array: np.ndarray) -> str | None:
        """Why `array` cannot go into this store (rows of other dims, another dtype), or None."""
        dims, dtype = self.attrs.get("dims"), self.attrs.get("dtype")
        if dims is not None and list(array.shape[1:]) != list(dims):
            return f"rows of shape {list(array.shape[1:])}, but this store's rows are {list(dims)} (its dims)"
        if dtype is not None and str(array.dtype) != dtype:
            return f"dtype {array.dtype}, but this store holds {dtype}"
        return None

    def write_shard(self, shard_id: str, results: Sequence[ClipResult]) -> dict[str, Any]:
        """Write the shard's arrays, then its commit record; return the record."""
        ok = [r for r in results if r.array is not None]
        dims, dtype = self.attrs.get("dims"), self.attrs.get("dtype")
        for r in ok:
            why = self.mismatch(r.array)
            if why:
                raise StoreError(f"clip {r.clip_id}: {why}")
        lengths = np.array([r.array.shape[0] for r in ok], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if ok:
            data = np.ascontiguousarray(np.concatenate([r.array for r in ok], axis=0))
        else:
            data = np.zeros((0, *(dims or [])), dtype=dtype or "float32")

        final = self.path / "shards" / f"{shard_id}{self.backend.suffix}"
        tmp = final.with_name(f".tmp-{shard_id}-{uuid.uuid4().hex[:8]}{self.backend.suffix}")
        self.backend.write(tmp, data, offsets)
        if final.exists():  # an earlier writer died between rename and commit
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(tmp, final)

        record = {
            "shard": shard_id,
            "file": final.name,
            "created": time.time(),
            "clips": [{"id": r.clip_id, "key": r.key, "start": int(offsets[i]), "stop": int(offsets[i + 1])}
                      for i, r in enumerate(ok)],
            "failed": [{"id": r.clip_id, "key": r.key, "reason": r.reason} for r in results if r.array is None],
        }
        _atomic_write_text(self.path / "commits" / f"{shard_id}.json", json.dumps(record))
        return record


def clip_mean(rows: np.ndarray) -> np.ndarray:
    """A clip's rows `[T, *dims]` as one flat vector: their mean, accumulated in float64 and returned in
    the rows' float dtype (float32 for integer rows); a single row comes back unchanged."""
    dtype = rows.dtype if np.issubdtype(rows.dtype, np.floating) else np.dtype(np.float32)
    flat = rows.reshape(rows.shape[0], -1)
    if flat.shape[0] == 1:
        return flat[0].astype(dtype)
    return flat.mean(axis=0, dtype=np.float64).astype(dtype)


def read_commits(path: Path) -> list[dict[str, Any]]:
    """All committed shard records of a store, oldest first."""
    records = []
    for p in (path / "commits").glob("*.json"):
        records.append(json.loads(p.read_text()))
    records.sort(key=lambda r: (r["created"], r["shard"]))
    return records


def write_failures_log(path: Path) -> list[dict[str, Any]]:
    """Rewrite failures.jsonl from the commit records; return the failures."""
    failures = [f for rec in read_commits(path) for f in rec["failed"]]
    _atomic_write_text(path / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures))
    return failures


class FeatureStore:
    """Read-only view of a store: `clip_ids`, `store[clip_id]`, `to_dask()`, `attrs`, `failures`.

    With `clip_keys` (clip id -> content key, from a dataset manifest) the view holds exactly the
    entries computed from the current content of each clip; without it, the newest entry per clip.
    """

    def __init__(self, path: str | os.PathLike, clip_keys: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        attrs_path = self.path / ATTRS_FILE
        if not attrs_path.exists():
            raise StoreError(f"no feature store at {self.path} (no {ATTRS_FILE}); "
                             "run `pipeline run extract` to create it, or check the path")
        self.attrs: dict[str, Any] = json.loads(attrs_path.read_text())
        self._backend = get_backend(self.attrs["backend"])
        self._index: dict[str, tuple[str, int, int]] = {}
        self._failures: dict[str, str] = {}
        for rec in read_commits(self.path):
            for c in rec["clips"]:
                if clip_keys is None or clip_keys.get(c["id"]) == c["key"]:
                    self._index[c["id"]] = (rec["file"], c["start"], c["stop"])
                    self._failures.pop(c["id"], None)
            for f in rec["failed"]:
                if clip_keys is None or clip_keys.get(f["id"]) == f["key"]:
                    self._failures[f["id"]] = f["reason"]
                    self._index.pop(f["id"], None)
        if clip_keys is not None:
            order = {cid: i for i, cid in enumerate(clip_keys)}
            self.clip_ids = sorted(self._index, key=order.__getitem__)
        else:
            self.clip_ids = sorted(self._index)
        self._open: dict[str, Any] = {}

    def subset(self, clip_ids: Iterable[str]) -> "FeatureStore":
        """A view restricted to `clip_ids` (cheap to pickle for a worker)."""
        view = object.__new__(FeatureStore)
        wanted = list(clip_ids)
        view.path, view.attrs, view._backend, view._open = self.path, self.attrs, self._backend, {}
        view._index = {c: self._index[c] for c in wanted if c in self._index}
        view._failures = {c: self._failures[c] for c in wanted if c in self._failures}
        view.clip_ids = [c for c in wanted if c in view._index]
        return view

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}

    @property
    def failures(self) -> dict[str, str]:
        """Clip id -> reason, for clips that could not be computed."""
        return dict(self._failures)

    @property
    def lengths(self) -> np.ndarray:
        """Rows per clip, in `clip_ids` order."""
        return np.array([self._index[c][2] - self._index[c][1] for c in self.clip_ids], dtype=np.int64)

    @property
    def offsets(self) -> np.ndarray:
        """CSR offsets into `to_dask()`'s rows, in `clip_ids` order (length n_clips + 1)."""
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.clip_ids)

    def _shard(self, file: str) -> Any:
        if file not in self._open:
            self._open[file] = self._backend.open(self.path / "shards" / file)
        return self._open[file]

    def __getitem__(self, clip_id: str) -> np.ndarray:
        try:
            file, start, stop = self._index[clip_id]
        except KeyError:
            why = f" (it failed: {self._failures[clip_id]})" if clip_id in self._failures else ""
            raise KeyError(f"clip '{clip_id}' is not in store {self.path}{why}") from None
        return np.asarray(self._shard(file)[start:stop])

    def clip_means(self, clip_ids: Sequence[str] | None = None) -> np.ndarray:
        """One vector per clip, the mean over its rows, `[n_clips, prod(dims)]` in `clip_ids` order;
        each shard is read once (not once per clip), so this is fast on stores of many small clips."""
        ids = list(self.clip_ids if clip_ids is None else clip_ids)
        by_file: dict[str, list[int]] = {}
        for i, cid in enumerate(ids):
            if cid not in self._index:
                self[cid]  # raises the KeyError that says why
            by_file.setdefault(self._index[cid][0], []).append(i)
        out: np.ndarray | None = None
        for file, members in by_file.items():
            spans = [self._index[ids[i]][1:] for i in members]
            lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
            block = np.asarray(self._shard(file)[lo:hi])
            for i, (a, b) in zip(members, spans):
                v = clip_mean(block[a - lo:b - lo])
                if out is None:
                    out = np.empty((len(ids), v.size), dtype=v.dtype)
                out[i] = v
        if out is None:
            dims = self.attrs.get("dims") or []
            return np.zeros((0, int(np.prod(dims))), dtype=self.attrs.get("dtype") or "float32")
        return out

    def items(self) -> Iterable[tuple[str, np.ndarray]]:
        """(clip id, array) pairs in `clip_ids` order."""
        for cid in self.clip_ids:
            yield cid, self[cid]

    def to_dask(self) -> Any:
        """All clips' rows as one dask array `[N_rows, *dims]`, in `clip_ids` order (see `offsets`)."""
        import dask.array as da

        pieces: list[Any] = []
        whole: dict[str, Any] = {}
        run: list[Any] | None = None  # [file, start, stop] of the current contiguous run
        for cid in self.clip_ids:
            file, start, stop = self._index[cid]
            if run and run[0] == file and run[2] == start:
                run[2] = stop
                continue
            if run:
                pieces.append((run[0], run[1], run[2]))
            run = [file, start, stop]
        if run:
            pieces.append((run[0], run[1], run[2]))
        if not pieces:
            dims = tuple(self.attrs.get("dims") or ())
            return da.zeros((0, *dims), dtype=self.attrs.get("dtype", "float32"))
        arrays = []
        for file, start, stop in pieces:
            if file not in whole:
                whole[file] = self._backend.to_dask(self.path / "shards" / file)
            arrays.append(whole[file][start:stop])
        return da.concatenate(arrays, axis=0)

    def __repr__(self) -> str:
        a = self.attrs
        return (f"FeatureStore({str(self.path)!r}, extractor={a.get('extractor')!r}, "
                f"clips={len(self)}, dims={a.get('dims')}, dtype={a.get('dtype')})")
