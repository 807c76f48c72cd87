"""Media decoding: probe, mono audio at a sample rate, RGB frames sampled at an fps.

Two backends give the same arrays: `pyav` (default; the FFmpeg libraries in-process through PyAV, no
process per clip) and `ffmpeg` (the ffmpeg / ffprobe programs through ffmpeg-python). The runner decodes
through `decoder()`, which runs `pyav` in long-lived decoder processes so that a file that crashes or
hangs the library fails alone (see pipeline.media.isolated).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .common import BACKENDS, DEFAULT_BACKEND, DEFAULT_TIMEOUT, MediaError, MediaInfo, backend_module
from .isolated import decoder

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "DEFAULT_TIMEOUT", "MediaError", "MediaInfo", "backend_module",
           "decode_audio", "decode_frames", "decoder", "probe"]


def probe(path: str | os.PathLike, backend: str = DEFAULT_BACKEND) -> MediaInfo:
    """Probe a media file; raise MediaError with a specific reason when it is unusable."""
    return backend_module(backend).probe(path)


def decode_audio(path: str | os.PathLike, sample_rate: int, start: float | None = None,
                 duration: float | None = None, info: MediaInfo | None = None,
                 backend: str = DEFAULT_BACKEND) -> np.ndarray:
    """The first audio stream as mono float32 in [-1, 1] at `sample_rate` (channels averaged), from
    `start` for `duration` seconds when given."""
    return backend_module(backend).decode_audio(path, sample_rate, start=start, duration=duration, info=info)


def decode_frames(path: str | os.PathLike, fps: float, size: int | tuple[int, int] | None = None,
                  start: float | None = None, duration: float | None = None, info: MediaInfo | None = None,
                  backend: str = DEFAULT_BACKEND) -> np.ndarray:
    """Frames sampled at `fps` while decoding, at `size` (w, h) or the display size: uint8 `[T, H, W, 3]`."""
    return backend_module(backend).decode_frames(path, fps, size, start=start, duration=duration, info=info)
