"""Nearest neighbours over an embeddings store by cosine similarity (the inner product of l2-normalised rows).

The rows are copied once, row block by row block, into a flat float32 `.npy` beside the other cached vectors
(`CACHE/vectors/<digest>.npy`, keyed by the store's commit records, so a rewritten store gets a new file), then
memory-mapped: a search reads blocks of rows through the page cache and never holds them all in RAM. Up to
`EXACT_LIMIT` rows the search is exact; above it, with faiss installed (`pip install avpipeline[ann]`), an IVF index
(inner product, built once and saved beside the vectors) answers instead, and without faiss the exact search
goes on, slower, with a warning."""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

EXACT_LIMIT = 100_000
BLOCK = 65_536  # rows scored at once: 65k x 512 float32 = 128 MB at most


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the indices and values of the k largest scores, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    if k <= 0:
        return np.zeros((len(scores), 0), np.int64), np.zeros((len(scores), 0), np.float32)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(vals, order, axis=1)


class VectorIndex:
    """Cosine nearest neighbours over memory-mapped rows (`ids[i]` is row i)."""

    def __init__(self, vectors: np.ndarray, ids: list[str], ann: Any = None) -> None:
        self.vectors, self.ids, self.ann = vectors, ids, ann

    @classmethod
    def from_store(cls, store_path: Path, cache_dir: Path, exact_limit: int = EXACT_LIMIT) -> "VectorIndex":
        """The index of an embeddings store (one row per id), its vectors file made on first use."""
        from ..cache import hash_key
        from ..store import FeatureStore, scan_store

        scan = scan_store(store_path)
        store = FeatureStore(store_path, scan=scan)
        ids = list(store.clip_ids)
        digest = hash_key([str(Path(store_path).resolve()), scan.records])
        path = cache_dir / f"{digest}.npy"
        if not path.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
            dim = int(np.prod(store.attrs.get("dims") or [1]))
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(ids), dim))
            for a in range(0, len(ids), BLOCK):
                chunk = ids[a:a + BLOCK]
                out[a:a + len(chunk)] = normalize(store.clip_means(chunk).reshape(len(chunk), dim))
            out.flush()
            del out
            os.replace(tmp, path)
        return cls.from_file(path, ids, exact_limit)

    @classmethod
    def from_file(cls, path: Path, ids: list[str], exact_limit: int = EXACT_LIMIT) -> "VectorIndex":
        """An index over a `.npy` of l2-normalised rows (memory-mapped), with faiss above `exact_limit` rows."""
        vectors = np.load(path, mmap_mode="r")
        if len(vectors) != len(ids):
            raise ValueError(f"{path} holds {len(vectors)} rows for {len(ids)} ids; delete it to rebuild it")
        ann = None
        if len(ids) > exact_limit:
            try:
                ann = _ivf(path, vectors)
            except ImportError:
                log.warning("%d vectors and no faiss: exact search (pip install avpipeline[ann] for an IVF index)",
                            len(ids))
        return cls(vectors, ids, ann)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`[q, k]` row indices and cosine scores of each query's nearest rows, best first; `allowed`: a boolean
        mask of the rows that may be returned."""
        q = normalize(np.atleast_2d(queries))
        if q.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"queries of {q.shape[1]} dims against vectors of {self.vectors.shape[1]}")
        if self.ann is not None:
            return self._search_ann(q, k, allowed)
        best_i = np.zeros((len(q), 0), np.int64)
        best_s = np.zeros((len(q), 0), np.float32)
        for a in range(0, len(self.vectors), BLOCK):
            s = np.asarray(self.vectors[a:a + BLOCK]) @ q.T
            s = s.T
            if allowed is not None:
                s[:, ~allowed[a:a + BLOCK]] = -np.inf
            i, v = top_k(s, k)
            best_i, best_s = np.concatenate([best_i, i + a], 1), np.concatenate([best_s, v], 1)
            j, best_s = top_k(best_s, k)
            best_i = np.take_along_axis(best_i, j, 1)
        keep = np.isfinite(best_s).all(axis=0)  # fewer allowed rows than k
        return best_i[:, keep], best_s[:, keep]

    def _search_ann(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params: Any = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.flatnonzero(allowed).astype(np.int64))  # referenced until searched
            params = faiss.SearchParametersIVF()
            params.sel, params.nprobe = selector, self.ann.nprobe
        s, i = self.ann.search(np.ascontiguousarray(q), k, params=params)
        keep = (i >= 0).all(axis=0)
        return i[:, keep].astype(np.int64), s[:, keep]


def _ivf(path: Path, vectors: np.ndarray) -> Any:
    """An IVF-Flat inner-product index of the vectors (4 sqrt(n) lists, 64 probed), trained on a sample and
    saved beside them; loaded when it is there."""
    import faiss

    saved = path.with_suffix(".ivf")
    index: Any
    if saved.is_file():
        index = faiss.read_index(str(saved))
    else:
        n, d = vectors.shape
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)]))
        for a in range(0, n, BLOCK):
            index.add(np.ascontiguousarray(vectors[a:a + BLOCK]))
        tmp = saved.with_suffix(f".{uuid.uuid4().hex}.partial")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, saved)
    index.nprobe = 64
    return index
