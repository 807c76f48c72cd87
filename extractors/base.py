"""The extractor contract: identity params in `Config`, an explicit VERSION, per-clip load, batched compute."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

if TYPE_CHECKING:
    from pipeline.config import ExecutionParams
    from pipeline.datasets import Clip
    from pipeline.store import FeatureStore


@dataclass(frozen=True)
class OutputSpec:
    """What one clip's output looks like: rows of shape `dims`, `frame_rate` rows per second."""

    kind: str
    dims: tuple[int, ...] | None  # None: the source's, known once read (imported features)
    dtype: str | None
    frame_rate: float | None
    extra: dict[str, Any] = field(default_factory=dict)


class Extractor:
    """Base class: `load` runs per clip (decode or read upstream), `compute` runs on a batch of clips."""

    name: ClassVar[str]
    VERSION: ClassVar[int]
    Config: ClassVar[type]
    consumes: ClassVar[str | None] = None  # kind of upstream output read; None reads the clip's media
    produces: ClassVar[str]
    reads: ClassVar[str] = "media"  # what a root stage reads from the dataset: media, or features files
    roles: ClassVar[tuple[str, ...]] = ()  # the media roles a root stage decodes, first found first ('audio', 'video')
    modality: ClassVar[str | None] = None  # audio or visual: which side of an export its output goes to
    allow_download: bool = True  # `status` and `gc` compute keys without fetching weights

    def __init__(self, config: Any, execution: "ExecutionParams | None" = None) -> None:
        self.config: Any = config if dataclasses.is_dataclass(config) else self.Config(**(config or {}))
        self.execution = execution

    @property
    def weights_dirs(self) -> list[Path]:
        """Where named weights files are looked for before the cache directory (the dataset's `weights: DIR`)."""
        return [Path(self.execution.weights_dir)] if self.execution and self.execution.weights_dir else []

    @property
    def media(self) -> Any:
        """The decoder of this run's media backend (pipeline.media.decoder): probe, decode_audio, decode_frames."""
        from pipeline.media import DEFAULT_BACKEND, DEFAULT_TIMEOUT, decoder

        ex = self.execution
        if ex is None:
            return decoder(DEFAULT_BACKEND, DEFAULT_TIMEOUT, 1)
        return decoder(ex.media_backend, ex.decode_timeout, ex.decode_threads)

    def weights_digest(self) -> str | None:
        """Digest of the weights this extractor computes with (None when it has none)."""
        return None

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        """Shape, dtype and rate of the output, given the upstream store's attrs."""
        raise NotImplementedError

    def load(self, clip: "Clip", upstream: "FeatureStore | None") -> Any:
        """One clip's input (an array; a sentence for a stage that reads text); raise pipeline.media.MediaError for
        a clip that cannot be used.

        The default serves every extractor that `consumes` an upstream store: that store's rows."""
        from pipeline.media import MediaError

        if upstream is None:
            raise NotImplementedError(f"{type(self).__name__} reads media itself and must define load()")
        if clip.clip_id not in upstream:
            raise MediaError(f"upstream failed: {upstream.failures.get(clip.clip_id, 'not computed')}")
        return upstream[clip.clip_id]

    def min_seconds(self) -> float | None:
        """The shortest input that gives at least one row (None: any input that loads gives one)."""
        return None

    def no_rows_reason(self, loaded: Any, upstream: dict[str, Any] | None = None) -> str:
        """Why a clip gave no rows, for the failures log: its length and what the extractor needs."""
        rate = (upstream or {}).get("frame_rate")
        length = f"{len(loaded) / rate:.2f} s" if rate and hasattr(loaded, "__len__") else "its input"
        need = self.min_seconds()
        if need is None:
            return f"no rows: {self.name} produced nothing from {length}"
        pad = "; set pad_short: true on the stage to zero-pad it" if hasattr(self.config, "pad_short") else ""
        return f"too short: {length}; {self.name} needs at least {need:.3f} s{pad}"

    def release(self) -> None:
        """Free what `load` holds open between clips (file handles); called after each shard."""

    def compute(self, inputs: Sequence[np.ndarray], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        """Outputs for a batch of clip inputs, one array `[rows, *dims]` per clip."""
        raise NotImplementedError


def split_rows(flat: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """Cut the rows of a batch computed over several clips back into one array per clip."""
    bounds = np.cumsum([0, *lengths])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
