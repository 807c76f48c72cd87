"""Store backends: how one shard's flat `data` and `offsets` are written to and read from disk (zarr, HDF5)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..registry import STORE_BACKENDS, register_backend

_TARGET_CHUNK_BYTES = 4 << 20


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


def _shard_suffixes() -> set[str]:
    """The file suffixes of every store backend's shards (`.zarr`, `.h5`)."""
    return {STORE_BACKENDS.get(n).suffix for n in STORE_BACKENDS.names()}
