"""An extractor in one folder, as a plugin: `toy-zcr`, the zero-crossing rate of the `audio` stage's waveform per
window. It consumes the upstream store's rows, so it only defines its params, output and compute."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from extractors.base import Extractor, OutputSpec
from pipeline.registry import register_extractor


@dataclass
class ZcrConfig:
    window: float = 0.1  # seconds per row (an identity param: it changes the store key)

    def __post_init__(self) -> None:
        if not 0.001 <= self.window <= 10:
            raise ValueError(f"window must be between 0.001 and 10 s, got {self.window}")


@register_extractor
class ZeroCrossings(Extractor):
    """Per window of `window` seconds: the share of neighbouring samples whose signs differ (a trailing part
    window is dropped)."""

    name = "toy-zcr"
    VERSION = 1
    Config = ZcrConfig
    consumes = "waveform"
    produces = "zcr"
    modality = "audio"

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        return OutputSpec("zcr", (1,), "float32", 1.0 / self.config.window)

    def min_seconds(self) -> float | None:
        return self.config.window

    def compute(self, inputs: Sequence[np.ndarray], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        n = max(2, int(round((upstream or {})["sample_rate"] * self.config.window)))
        out = []
        for x in inputs:
            frames = np.asarray(x[: len(x) // n * n], dtype=np.float32).reshape(-1, n)
            out.append(np.mean(np.signbit(frames[:, 1:]) != np.signbit(frames[:, :-1]), axis=1,
                               dtype=np.float32)[:, None])
        return out
