"""Reading a store: `FeatureStore`, a read-only view of the entries current for a set of row keys."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .backends import get_backend
from .files import StoreError
from .records import ATTRS_FILE
from .scan import StoreScan, repair_command, scan_store
from .verify import _checked_block, _verify_files


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
