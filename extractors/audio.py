"""`audio`: demux the soundtrack of each clip to a mono float32 waveform at a fixed sample rate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.registry import register_extractor

from .base import Extractor, OutputSpec


@dataclass
class AudioConfig:
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if not 1000 <= self.sample_rate <= 384000:
            raise ValueError(f"sample_rate must be between 1000 and 384000 Hz, got {self.sample_rate}")


@register_extractor
class AudioDemux(Extractor):
    """Mono waveform per clip (the mean of its channels), decoded at `sample_rate`."""

    name = "audio"
    VERSION = 2  # 2: multichannel audio is the mean of its channels (1: ffmpeg's -ac 1 downmix)
    Config = AudioConfig
    produces = "waveform"
    modality = "audio"
    roles = ("audio", "video")

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        sr = self.config.sample_rate
        return OutputSpec("waveform", (), "float32", float(sr), {"sample_rate": sr})

    def load(self, clip, upstream=None) -> np.ndarray:
        duration = clip.end - clip.start if clip.start is not None and clip.end is not None else None
        return self.media.decode_audio(clip.source(*self.roles), self.config.sample_rate, start=clip.start,
                                       duration=duration)

    def compute(self, inputs: Sequence[np.ndarray], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        return [np.asarray(x, dtype=np.float32) for x in inputs]
