"""`imported`: features someone else extracted (HDF5 rows, per-video .npy files) read into our stores.

A features dataset (`tnn_h5`, `tnn_npy`, `mv10k`) names, per clip, a file under the media role
`<view>_features` and, for a container, where inside it the clip lives (`refs`, e.g.
`audio_train[12]`). This stage copies those arrays into a store so trainers read them like any
extracted feature. uint8 arrays are dequantised the way the TNN-C-CCA code does (its own rule, not
YouTube-8M's): `(x - 128) / 256` in float32; float arrays keep their dtype, so an import followed
by an export reproduces the source exactly.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.media import MediaError

# np.load parses each .npy header with ast.literal_eval, and CPython 3.11's ast.parse is not thread-safe: two decode
# threads loading at once failed here with "SystemError: AST constructor recursion depth mismatch" (seen in CI)
_NPY_HEADER = threading.Lock()
from pipeline.registry import register_extractor

from .base import Extractor, OutputSpec

_ROW = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<row>\d+)\])?$")


def dequantize_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 codes back to floats, `(x - 128) / 256`, as the TNN-C-CCA feature loader does."""
    return (x.astype(np.float32) - 128.0) / 256.0


@dataclass
class ImportConfig:
    view: str = "audio"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.view):
            raise ValueError(f"view must be a lower-case name such as audio or visual, got {self.view!r}")


@register_extractor
class ImportedFeatures(Extractor):
    """Rows of a pre-extracted feature file (HDF5 dataset row or .npy), one array per clip."""

    name = "imported"
    VERSION = 1
    Config = ImportConfig
    reads = "features"
    produces = "features"

    def __init__(self, config: Any, execution: Any = None) -> None:
        super().__init__(config, execution)
        self._files: dict[Path, Any] = {}
        self._lock = threading.Lock()  # h5py serialises anyway; this guards the handle cache

    @property
    def modality(self) -> str:
        return self.config.view

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        """Dims and dtype are the source's (`upstream['source']`, from the dataset's feature_spec)."""
        extra = {"view": self.config.view}
        source = (upstream or {}).get("source")
        if source is None:
            return OutputSpec("features", None, None, None, extra)
        if self.config.view not in source:
            from pipeline.datasets import DatasetError

            raise DatasetError(f"stage view '{self.config.view}': the dataset has features for "
                               f"{', '.join(sorted(source))} only")
        spec = source[self.config.view]
        dtype = "float32" if spec["dtype"] == "uint8" else spec["dtype"]
        return OutputSpec("features", tuple(spec["dims"]), dtype, None, extra)

    def load(self, clip, upstream=None) -> np.ndarray:
        role = f"{self.config.view}_features"
        if role not in clip.media:
            raise MediaError(f"no {role} in this dataset's manifest (it has {sorted(clip.media)})")
        path = clip.media[role]
        try:
            x = self._read(path, clip.refs.get(role))
        except (OSError, KeyError, ValueError) as e:
            raise MediaError(f"cannot read {path}: {e}") from None
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] == 0:
            raise MediaError(f"{path}: expected rows of features [T, D], got shape {x.shape}")
        return dequantize_uint8(x) if x.dtype == np.uint8 else x

    def _read(self, path: Path, ref: str | None) -> np.ndarray:
        if path.suffix.lower() == ".npy":
            with _NPY_HEADER:
                return np.load(path, allow_pickle=False)
        m = _ROW.match(ref or "")
        if not m:
            raise ValueError(f"reference {ref!r} is not of the form 'dataset[row]'")
        import h5py

        with self._lock:
            f = self._files.get(path)
            if f is None:
                f = self._files[path] = h5py.File(path, "r")
            ds = f[m["name"]]
            return np.asarray(ds[int(m["row"])] if m["row"] is not None else ds[()])

    def release(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()

    def compute(self, inputs: Sequence[np.ndarray], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        return [np.ascontiguousarray(x) for x in inputs]
