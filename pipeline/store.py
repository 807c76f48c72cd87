"""Feature stores: per-clip ragged arrays in CSR form, written shard by shard, committed last.

Layout of one store directory::

    attrs.json              how to read the store back (extractor, version, params, dims, dtype, rate)
    shards/<sid>.zarr|.h5   one shard: `data[N_rows, *dims]` chunked along rows, `offsets[n+1]`
    commits/<sid>.json      the shard's commit record, written last: clips, row ranges, failures, and
                            what the shard must hold (array shapes, dtypes and digests; every file's
                            size, mtime and digest), sealed by a checksum of the record itself
    damaged/<sid>.json      a shard `pipeline verify` found damaged: the next run recomputes it
    failures.jsonl          a readable copy of every committed failure (clip id, reason)

A shard is trusted only once its commit record exists and checks out. The shard data is written under
a temporary name and renamed into place first, so a killed writer leaves at most an orphaned
temporary (cleaned up by the next run) and never a half-written shard that anyone reads.

Checks, cheapest first: `scan_store` (every open and every run) parses and validates each record and
stats each file it lists (present, same size; a file whose mtime moved is hashed and must match its
digest); the first read of a shard through a FeatureStore hashes its files; `verify_store` (the
`pipeline verify` command) hashes everything and decodes every array against its digest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .media.common import is_transient
from .registry import STORE_BACKENDS, register_backend

log = logging.getLogger(__name__)

ATTRS_FILE = "attrs.json"
FORMAT_VERSION = 2  # 2: commit records carry integrity data and a checksum (1: neither)
_TARGET_CHUNK_BYTES = 4 << 20
_SELF = "."  # the files-table name of a shard that is a single file (HDF5)


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


def _chunk_rows(row_shape: tuple[int, ...], dtype: np.dtype) -> int:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(1, _TARGET_CHUNK_BYTES // row_bytes)


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
    h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    return h.hexdigest()[:32]


_CHECKSUM = ', "checksum": "'


def _record_text(record: dict[str, Any]) -> str:
    """A commit record as stored: its JSON, with the checksum of that very text added as the last field
    (checking it later needs no re-serialisation, only a hash of the bytes before it)."""
    body = json.dumps({k: v for k, v in record.items() if k != "checksum"})
    digest = hashlib.sha256(body.encode()).hexdigest()[:32]
    record["checksum"] = digest
    return f'{body[:-1]}{_CHECKSUM}{digest}"}}'


def _checksum_matches(raw: bytes, checksum: Any) -> bool:
    """The record's text up to its checksum hashes to it, and nothing follows it (no appended fields)."""
    if not isinstance(checksum, str):
        return False
    cut = raw.rfind(_CHECKSUM.encode())
    return (cut > 0 and raw[cut:].rstrip() == f'{_CHECKSUM}{checksum}"}}'.encode()
            and hashlib.sha256(raw[:cut] + b"}").hexdigest()[:32] == checksum)


class _Backend:
    """Writes one shard's flat `data` and `offsets` to a path, and reads them back."""

    name: str
    suffix: str

    def write(self, path: Path, data: np.ndarray, offsets: np.ndarray) -> None:
        raise NotImplementedError

    def open(self, path: Path) -> Any:
        """Return an array-like over the shard's `data` that supports row slicing."""
        raise NotImplementedError

    def read_offsets(self, path: Path) -> np.ndarray:
        """The shard's whole `offsets` array."""
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

    def read_offsets(self, path: Path) -> np.ndarray:
        import zarr

        return np.asarray(zarr.open_array(str(path / "offsets"), mode="r")[...])

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

    def read_offsets(self, path: Path) -> np.ndarray:
        import h5py

        with h5py.File(path, "r") as f:
            return np.asarray(f["offsets"][...])

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


def _shard_files(shard: Path) -> dict[str, Path]:
    """Every file of a shard by its name inside the shard (a single-file shard is `.`)."""
    if not shard.is_dir():
        return {_SELF: shard}
    return {p.relative_to(shard).as_posix(): p for p in sorted(shard.rglob("*")) if p.is_file()}


def _file_table(shard: Path) -> dict[str, list[Any]]:
    """name -> [size, mtime_ns, digest] for every file of a shard, as a commit record stores them."""
    table = {}
    for name, p in _shard_files(shard).items():
        st = p.stat()
        table[name] = [st.st_size, st.st_mtime_ns, file_digest(p)]
    return table


def _integrity(shard: Path, data: np.ndarray, offsets: np.ndarray) -> dict[str, Any]:
    return {"arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str, "digest": array_digest(a)}
                       for name, a in (("data", data), ("offsets", offsets))},
            "files": _file_table(shard)}


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
                "failed": [{"id": r.clip_id, "key": r.key, "reason": r.reason, "transient": is_transient(r.reason)}
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


def clip_mean(rows: np.ndarray) -> np.ndarray:
    """A clip's rows `[T, *dims]` as one flat vector: their mean, accumulated in float64 and returned in
    the rows' float dtype (float32 for integer rows); a single row comes back unchanged."""
    if rows.shape[0] == 0:
        raise StoreError("a clip with no rows has no mean")
    dtype = rows.dtype if np.issubdtype(rows.dtype, np.floating) else np.dtype(np.float32)
    flat = rows.reshape(rows.shape[0], -1)
    if flat.shape[0] == 1:
        return flat[0].astype(dtype)
    return flat.mean(axis=0, dtype=np.float64).astype(dtype)


def read_attrs(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A store's attrs.json, or None and why it cannot be used."""
    try:
        attrs = json.loads((path / ATTRS_FILE).read_text())
    except FileNotFoundError:
        return None, f"{ATTRS_FILE} is missing"
    except (OSError, ValueError) as e:
        return None, f"{ATTRS_FILE} is unreadable ({type(e).__name__})"
    if not isinstance(attrs, dict) or "backend" not in attrs:
        return None, f"{ATTRS_FILE} is not a store's attrs"
    return attrs, None


def _is_legacy(rec: dict[str, Any]) -> bool:
    """A format-1 record: written before records carried integrity data (and nothing claims otherwise)."""
    return rec.get("format", 1) == 1 and not {"checksum", "files", "arrays"} & rec.keys()


def _shard_files_ok(rec: dict[str, Any]) -> bool:
    if rec["file"] not in {f"{rec['shard']}{x}" for x in _shard_suffixes()}:  # never a path out of shards/
        return False
    if _is_legacy(rec):
        return True
    files = rec["files"]
    return isinstance(files, dict) and bool(files) and all(
        isinstance(name, str) and not name.startswith("/") and ".." not in name.split("/")
        and isinstance(v, list) and len(v) == 3 and isinstance(v[0], int) and isinstance(v[1], int)
        and isinstance(v[2], str) for name, v in files.items())


def _record_problem(rec: Any, raw: bytes, shard_id: str, store_key: str | None) -> str | None:
    """Why a commit record (parsed, and its bytes) cannot be trusted, or None."""
    if not isinstance(rec, dict):
        return "commit record is not a JSON object"
    try:
        if not _is_legacy(rec) and (rec.get("format") != FORMAT_VERSION
                                    or not _checksum_matches(raw, rec.get("checksum"))):
            return "commit record was altered after it was written (its checksum does not match)"
        if rec["shard"] != shard_id:
            return f"commit record names shard {rec['shard']}, not {shard_id}"
        if store_key and rec.get("store_key") not in (None, store_key):
            return f"commit record belongs to store {rec['store_key']}, not {store_key}"
        if not isinstance(rec["created"], (int, float)) or not _shard_files_ok(rec):
            return "commit record is malformed (its shard file or file table)"
        stop = 0
        for c in rec["clips"]:
            if (not isinstance(c["id"], str) or not isinstance(c["key"], str) or not isinstance(c["start"], int)
                    or c["start"] != stop or not isinstance(c["stop"], int) or c["stop"] < c["start"]):
                return f"commit record's row ranges are inconsistent (clip {c['id']})"
            stop = c["stop"]
        for f in rec["failed"]:
            if not isinstance(f["id"], str) or not isinstance(f["key"], str) or not isinstance(f["reason"], str):
                return "commit record's failures are malformed"
        if not _is_legacy(rec):
            data, offsets = rec["arrays"]["data"], rec["arrays"]["offsets"]
            if data["shape"][0] != stop or offsets["shape"] != [len(rec["clips"]) + 1]:
                return (f"commit record is inconsistent: its clips span {stop} rows, its data holds "
                        f"{data['shape'][0]}")
    except (KeyError, TypeError, IndexError, AttributeError):
        return "commit record is incomplete (a field is missing or of the wrong type)"
    return None


def _unreachable(where: str, e: OSError) -> StoreError:
    """An error that says nothing about the data (permissions, I/O, too many open files): stop and say so,
    never count it as damage (damage is recomputed, and the shard's data is thrown away)."""
    return StoreError(f"cannot check {where}: {e.strerror or e}; fix access to the cache, then retry")


def _file_problem(shard: Path | str, files: dict[str, list[Any]], full: bool = False) -> tuple[str | None, bool]:
    """What is wrong with a shard's files against their committed table (None: they check out), and whether
    a file's mtime moved while its content did not. Cheap: present, same size, and a file whose mtime moved
    must still match its digest. `full`: every digest."""
    shard = str(shard)  # plain strings: this runs for every file of every shard on every open
    base = os.path.basename(shard)
    if not os.path.lexists(shard):
        return f"shard {base} is missing", False
    moved = False
    for name, (size, mtime_ns, digest) in files.items():
        p = shard if name == _SELF else os.path.join(shard, name)
        where = base if name == _SELF else f"{base}/{name}"
        try:
            st = os.stat(p)
        except (FileNotFoundError, NotADirectoryError):
            return f"{where} is missing", False
        except OSError as e:
            raise _unreachable(where, e) from None
        if st.st_size != size:
            how = "truncated" if st.st_size < size else "grown"
            return f"{where} is {how}: {st.st_size} bytes, {size} committed", False
        if full or st.st_mtime_ns != mtime_ns:
            try:
                same = file_digest(p) == digest
            except OSError as e:
                raise _unreachable(where, e) from None
            if not same:
                return f"{where} was modified: its content differs from what was committed", False
            moved = moved or st.st_mtime_ns != mtime_ns
    return None, moved


@dataclass
class StoreScan:
    """What a store's commit records say, checked: trusted records, damaged shards, legacy records."""

    path: Path
    attrs: dict[str, Any] | None
    attrs_problem: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)  # trusted, oldest first
    damaged: dict[str, str] = field(default_factory=dict)  # shard id -> what is wrong
    legacy: list[str] = field(default_factory=list)  # trusted format-1 shard ids (no digests to check)
    moved: list[str] = field(default_factory=list)  # trusted shards whose files' mtimes moved (a copy)

    def current(self, clip_keys: dict[str, str] | None) -> tuple[dict[str, tuple[dict, dict]], dict[str, tuple[dict, dict]]]:
        """Clip id -> (record, entry) of the newest computed and failed entry whose key is the clip's (`clip_keys`:
        clip id -> row key; many clips may share one row); without `clip_keys`, the newest entry per entry id. A
        clip is in at most one of the two."""
        ok: dict[str, tuple[dict, dict]] = {}
        failed: dict[str, tuple[dict, dict]] = {}
        for rec in self.records:  # oldest first: a newer entry for the same key wins
            for c in rec["clips"]:
                k = c["id"] if clip_keys is None else c["key"]
                ok[k] = (rec, c)
                failed.pop(k, None)
            for f in rec["failed"]:
                k = f["id"] if clip_keys is None else f["key"]
                failed[k] = (rec, f)
                ok.pop(k, None)
        if clip_keys is None:
            return ok, failed
        return ({cid: ok[k] for cid, k in clip_keys.items() if k in ok},
                {cid: failed[k] for cid, k in clip_keys.items() if k in failed})

    def describe_damage(self, limit: int = 3) -> str:
        """The damage in one line: attrs first, then up to `limit` shards."""
        parts = [self.attrs_problem] if self.attrs_problem else []
        parts += [f"shard {sid}: {why}" for sid, why in list(self.damaged.items())[:limit]]
        more = len(self.damaged) - limit
        return "; ".join(parts) + (f"; and {more} more damaged shard(s)" if more > 0 else "")

    @property
    def is_damaged(self) -> bool:
        return bool(self.attrs_problem or self.damaged)


def scan_store(path: str | os.PathLike, clip_keys: dict[str, str] | None = None) -> StoreScan:
    """Read and check a store's commit records (the cheap check). With `clip_keys`, only records that
    hold a current entry of some clip are checked against their files; an unreadable record always counts
    as damage, since nobody can tell what it held."""
    path = Path(path)
    attrs, problem = read_attrs(path)
    scan = StoreScan(path, attrs, problem if (path / "commits").is_dir() else None)
    key = attrs.get("key") if attrs else None
    commits = path / "commits"
    if not commits.is_dir():
        return scan
    marks: dict[str, dict[str, Any]] = {}  # shard id -> what `verify` found, for the record it checked
    if (path / "damaged").is_dir():
        for p in (path / "damaged").glob("*.json"):
            try:
                marks[p.stem] = json.loads(p.read_text())
            except (OSError, ValueError):
                marks[p.stem] = {"reason": "marked damaged", "checksum": None}
    records = []
    with os.scandir(commits) as it:
        entries = [e for e in it if e.name.endswith(".json") and not e.name.startswith(".")]
    for e in entries:
        sid = e.name[:-5]
        try:
            with open(e.path, "rb") as f:
                raw = f.read()
            rec = json.loads(raw)
        except FileNotFoundError:
            continue  # discarded by a run meanwhile
        except OSError as err:
            raise _unreachable(f"commit record {e.name} of {path}", err) from None
        except ValueError as err:
            scan.damaged[sid] = f"commit record is unreadable ({type(err).__name__})"
            continue
        why = _record_problem(rec, raw, sid, key)
        if why:
            scan.damaged[sid] = why
            continue
        mark = marks.get(sid)
        if isinstance(mark, dict) and mark.get("checksum") in (rec.get("checksum"), None):
            scan.damaged[sid] = str(mark.get("reason", "marked damaged"))
            continue
        records.append(rec)
    records.sort(key=lambda r: (r["created"], r["shard"]))
    relevant = records
    if clip_keys is not None:
        keys = set(clip_keys.values())
        relevant = [r for r in records if any(c["key"] in keys for c in r["clips"] + r["failed"])]
    shards = str(path / "shards")
    bad = set()
    for rec in relevant:
        if _is_legacy(rec):
            if not os.path.lexists(os.path.join(shards, rec["file"])):
                bad.add(rec["shard"])
                scan.damaged[rec["shard"]] = f"shard {rec['file']} is missing"
            else:
                scan.legacy.append(rec["shard"])
            continue
        why, moved = _file_problem(os.path.join(shards, rec["file"]), rec["files"])
        if why:
            bad.add(rec["shard"])
            scan.damaged[rec["shard"]] = why
        elif moved:
            scan.moved.append(rec["shard"])
    scan.records = [r for r in records if r["shard"] not in bad]
    return scan


def repair_command(attrs: dict[str, Any] | None, path: Path, dataset: str | None = None) -> str:
    """The command that recomputes a store's damaged shards for `dataset` (a shared store names none itself: then
    the command of any dataset that reads it), or, for a store that names no stage, what to do."""
    dataset = dataset or (attrs or {}).get("dataset")
    if attrs and attrs.get("stage"):
        which = f"--dataset {dataset}" if dataset else "--dataset D (any dataset that reads it)"
        return f"`pipeline run {attrs.get('group', 'extract')} {which} --stage {attrs['stage']}`"
    return f"a run of the stage that made {path}"


@dataclass
class Verification:
    """What `verify_store` found: shards checked, damage (shard id, or `attrs.json`, or a shard file that no
    record names -> reason), and whether the damaged shards were marked for the next run."""

    checked: int
    damaged: dict[str, str]
    marked: bool = False
    unmarked_why: str | None = None


def verify_store(path: str | os.PathLike, clip_keys: dict[str, str] | None = None, mark: bool = True) -> Verification:
    """The full check: every file's digest and every array decoded against its digest, the attrs, and shard files
    that no commit record names (orphans: their clips are not in the store). With `mark`, damaged shards are
    marked for the next run."""
    path = Path(path)
    scan = scan_store(path, clip_keys)
    damaged = dict(scan.damaged)
    backend = get_backend(scan.attrs["backend"]) if scan.attrs else None
    checked = len(scan.records) + len(damaged)
    for rec in scan.records:
        if _is_legacy(rec) or backend is None:
            continue
        shard = scan.path / "shards" / rec["file"]
        why, _ = _file_problem(shard, rec["files"], full=True)
        if why is None:
            try:
                arrays = {"data": np.asarray(backend.open(shard)[...]), "offsets": backend.read_offsets(shard)}
                for name, a in arrays.items():
                    if array_digest(a) != rec["arrays"][name]["digest"]:
                        why = f"{name} decodes to other values than were committed"
                        break
            except (OSError, MemoryError) as e:
                if not isinstance(e, FileNotFoundError):
                    raise
                why = f"cannot be decoded ({e})"
            except Exception as e:  # any other decoder failure is damage to report, not a crash
                why = f"cannot be decoded ({type(e).__name__}: {e})"
        if why:
            damaged[rec["shard"]] = why
    to_mark = dict(damaged)
    if scan.attrs_problem:
        damaged["attrs.json"] = f"{scan.attrs_problem} (the next run rewrites it from the stage's definition)"
    for shard in _orphans(path):
        damaged[f"orphan {shard.name}"] = ("a shard file that no commit record names (its record was deleted, or "
                                           "a writer died before committing): its clips are not in the store; "
                                           "the next run removes it and recomputes them")
    result = Verification(checked, damaged)
    if mark and to_mark and scan.attrs is not None:
        try:
            writer = StoreWriter(scan.path)
            checksums = {r["shard"]: r.get("checksum") for r in scan.records}
            for sid, why in to_mark.items():
                if sid not in scan.damaged:  # what the cheap check finds, every scan finds again
                    writer.mark_damaged(sid, why, checksums.get(sid))
            result.marked = True
        except OSError as e:
            result.unmarked_why = str(e)
            log.warning("store %s: damaged shards not marked (%s): a run will not know to recompute them", path, e)
    return result


def _shard_suffixes() -> set[str]:
    """The file suffixes of every store backend's shards (`.zarr`, `.h5`)."""
    return {STORE_BACKENDS.get(n).suffix for n in STORE_BACKENDS.names()}


def _orphans(path: Path) -> list[Path]:
    """Shard files that no commit record names (a deleted record, or a writer killed between its rename and its
    commit): their clips are not in the store."""
    suffixes = _shard_suffixes()
    shards = sorted((path / "shards").glob("*")) if (path / "shards").is_dir() else []
    return [p for p in shards if not p.name.startswith(".tmp-") and p.suffix in suffixes
            and not (path / "commits" / f"{p.name[:-len(p.suffix)]}.json").exists()]


def write_failures_log(path: Path, scan: StoreScan | None = None) -> list[dict[str, Any]]:
    """Rewrite failures.jsonl from the trusted commit records (each clip's newest entry: a failure computed
    since, on a retry, is gone); return the failures."""
    scan = scan or scan_store(path)
    failures = [f for _, f in scan.current(None)[1].values()]
    _atomic_write_text(path / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures))
    return failures


_VERIFIED: set[tuple[str, str]] = set()  # (shard path, record checksum) hashed in this process


def _verify_files(shard: Path, rec: dict[str, Any], hint: str) -> None:
    """Hash a shard's files once per process before its data is first returned."""
    if _is_legacy(rec) or (str(shard), rec["checksum"]) in _VERIFIED:
        return
    why, _ = _file_problem(shard, rec["files"], full=True)
    if why:
        raise StoreError(f"shard {rec['shard']} of store {shard.parent.parent} is damaged: {why}; run `pipeline "
                         f"verify` to mark it, then {hint} to recompute it")
    _VERIFIED.add((str(shard), rec["checksum"]))


def _checked_block(block: np.ndarray, shard: str = "", rec: dict[str, Any] | None = None, hint: str = "") -> np.ndarray:
    _verify_files(Path(shard), rec or {}, hint)
    return block


class FeatureStore:
    """Read-only view of a store: `clip_ids`, `store[clip_id]`, `to_dask()`, `attrs`, `failures`.

    With `clip_keys` (clip id -> content key, from a dataset manifest) the view holds exactly the
    entries computed from the current content of each clip; without it, the newest entry per clip.
    Opening runs the cheap check and refuses a damaged store (StoreError naming the shards, the damage
    and the command that repairs it); the first read of each shard hashes its files.
    """

    def __init__(self, path: str | os.PathLike, clip_keys: dict[str, str] | None = None,
                 scan: "StoreScan | None" = None, dataset: str | None = None) -> None:
        self.path = Path(path)
        scan = scan if scan is not None else scan_store(self.path, clip_keys)  # `scan`: one just made
        if scan.attrs is None:
            if not self.path.exists() or not (self.path / "commits").is_dir():
                raise StoreError(f"no feature store at {self.path} (no {ATTRS_FILE}); "
                                 "run `pipeline run extract` to create it, or check the path")
            raise StoreError(f"store {self.path} is damaged: {scan.attrs_problem}; run `pipeline run` on its "
                             "stage to rewrite it")
        self.attrs: dict[str, Any] = scan.attrs
        self._hint = repair_command(self.attrs, self.path, dataset)
        if scan.damaged:
            raise StoreError(f"store {self.path} has {len(scan.damaged)} damaged shard(s): "
                             f"{scan.describe_damage()}; run {self._hint} to recompute them")
        self._backend = get_backend(self.attrs["backend"])
        ok, failed = scan.current(clip_keys)
        self._index: dict[str, tuple[str, int, int]] = {cid: (rec["file"], c["start"], c["stop"])
                                                        for cid, (rec, c) in ok.items()}
        self._failures: dict[str, str] = {cid: f["reason"] for cid, (_, f) in failed.items()}
        self._records: dict[str, dict[str, Any]] = {rec["file"]: rec for rec, _ in ok.values()}
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
        view._hint = self._hint
        view._index = {c: self._index[c] for c in wanted if c in self._index}
        view._failures = {c: self._failures[c] for c in wanted if c in self._failures}
        view._records = {f: self._records[f] for f in {v[0] for v in view._index.values()}}
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

    def lengths_of(self, clip_ids: Sequence[str]) -> np.ndarray:
        """Rows of each of `clip_ids` (each must be in the store)."""
        return np.array([self._index[c][2] - self._index[c][1] for c in clip_ids], dtype=np.int64)

    def unusable(self, clip_id: str) -> str | None:
        """Why a clip cannot be read as features (failed, not computed, no rows), or None when it can."""
        if clip_id in self._index:
            _, start, stop = self._index[clip_id]
            return None if stop > start else "it has no rows (committed empty)"
        return f"it failed: {self._failures[clip_id]}" if clip_id in self._failures else "not computed"

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.clip_ids)

    def _shard(self, file: str) -> Any:
        if file not in self._open:
            shard = self.path / "shards" / file
            _verify_files(shard, self._records[file], self._hint)
            self._open[file] = self._backend.open(shard)
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
                if b == a:
                    raise StoreError(f"clip '{ids[i]}' of store {self.path} has no rows, so no mean; leave it out "
                                     "(FeatureStore.unusable says which clips)")
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
        """All clips' rows as one dask array `[N_rows, *dims]`, in `clip_ids` order (see `offsets`); each
        shard's files are hashed when its first block is computed."""
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
                shard = self.path / "shards" / file
                raw = self._backend.to_dask(shard)
                whole[file] = raw.map_blocks(_checked_block, dtype=raw.dtype, shard=str(shard),
                                             rec=self._records[file], hint=self._hint)
            arrays.append(whole[file][start:stop])
        return da.concatenate(arrays, axis=0)

    def __repr__(self) -> str:
        a = self.attrs
        return (f"FeatureStore({str(self.path)!r}, extractor={a.get('extractor')!r}, "
                f"clips={len(self)}, dims={a.get('dims')}, dtype={a.get('dtype')})")
