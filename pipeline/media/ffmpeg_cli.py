"""The `ffmpeg` media backend: the ffmpeg and ffprobe programs through ffmpeg-python, one process per call.

Paths reach ffmpeg as `file:<absolute path>` list arguments (no shell), so spaces, quotes,
a leading dash, colons and non-ASCII names are all taken literally.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    MISSING_INDEX,
    MediaError,
    MediaInfo,
    check_audio,
    check_complete,
    check_readable,
    ffmpeg_path,
    frame_size,
    has_mp4_header,
    readable_log,
    segment_seconds,
)

NAME = "ffmpeg"


def _stderr_tail(err: bytes | None, n: int = 300, path: Path | None = None) -> str:
    """What ffmpeg wrote to stderr, readable (see `readable_log`)."""
    return readable_log((err or b"").decode("utf-8", "replace").splitlines(), n, path)


def probe(path: str | os.PathLike, timeout: float | None = None) -> MediaInfo:
    """Probe a media file with ffprobe; raise MediaError with a specific reason when it is unusable."""
    path = Path(path)
    check_readable(path)
    rc, out, err = _exec(["ffprobe", "-v", "warning", "-show_format", "-show_streams", "-of", "json",
                          ffmpeg_path(path)], timeout, "ffprobe")  # warnings and errors, no banner
    if rc == 0:
        info = json.loads(out.decode("utf-8", "replace"))
    else:
        msg = _stderr_tail(err, path=path) if rc > 0 else f"ffprobe was killed by signal {-rc}"
        if "moov atom not found" in msg and has_mp4_header(path):
            raise MediaError(MISSING_INDEX) from None
        raise MediaError(f"corrupt container: ffprobe cannot parse it ({msg})")
    streams = info.get("streams", [])
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)

    def seconds(value: object) -> float | None:
        return float(value) if value not in (None, "N/A") else None

    durations = [d for d in [seconds(info.get("format", {}).get("duration"))]
                 + [seconds(s.get("duration")) for s in streams] if d is not None]
    fps = None
    if video is not None and video.get("avg_frame_rate", "0/0") not in ("0/0", "0/1"):
        num, den = video["avg_frame_rate"].split("/")
        fps = float(num) / float(den) if float(den) else None
    return MediaInfo(
        path=path,
        duration=max(durations) if durations else None,
        audio_duration=seconds(audio.get("duration")) if audio else None,
        video_duration=seconds(video.get("duration")) if video else None,
        has_audio=audio is not None,
        has_video=video is not None,
        sample_rate=int(audio["sample_rate"]) if audio and audio.get("sample_rate") else None,
        channels=int(audio["channels"]) if audio and audio.get("channels") else None,
        fps=fps,
        width=int(video["width"]) if video else None,
        height=int(video["height"]) if video else None,
        rotation=_rotation(video) if video else 0,
    )


def _rotation(stream: dict) -> int:
    try:
        angle = stream.get("tags", {}).get("rotate")
        if angle is None:
            angle = next((d["rotation"] for d in stream.get("side_data_list", []) if "rotation" in d), 0)
        return int(round(float(angle))) % 360
    except (TypeError, ValueError):
        return 0


def _exec(args: list[str], timeout: float | None = None, who: str = "ffmpeg") -> tuple[int, bytes, bytes]:
    """Run ffmpeg or ffprobe: (exit code, stdout, stderr). In a session of its own, so that Ctrl-C at the
    terminal reaches only the pipeline (which lets running shards finish), never a decoder mid-clip,
    whose exit would otherwise be recorded as that clip's failure. Past `timeout` seconds it is killed
    and the clip fails as hung."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise MediaError(f"decoder hung: {who} gave no result in {timeout:g} s; the file may be damaged "
                         "(raise execution.decode_timeout for very long media)") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, out, err


def _run(stream, what: str, path: Path, timeout: float | None) -> tuple[bytes, bytes]:
    rc, out, err = _exec(stream.global_args("-nostdin", "-hide_banner", "-loglevel", "error").compile(), timeout)
    if rc != 0:
        why = _stderr_tail(err, path=path) if rc > 0 else f"ffmpeg was killed by signal {-rc}"
        raise MediaError(f"decode error: ffmpeg could not decode the {what} ({why})")
    return out, err


def _input(path: Path, start: float | None, duration: float | None, **in_kw: Any):
    import ffmpeg

    if start is not None:
        in_kw["ss"] = start
    if duration is not None:
        in_kw["t"] = duration
    return ffmpeg.input(ffmpeg_path(path), **in_kw)


def decode_audio(path: str | os.PathLike, sample_rate: int, start: float | None = None,
                 duration: float | None = None, info: MediaInfo | None = None,
                 timeout: float | None = None) -> np.ndarray:
    """Decode the first audio stream to mono float32 in [-1, 1] at `sample_rate`, channels averaged
    (probes first)."""
    path = Path(path)
    info = info or probe(path, timeout)
    check_audio(info)
    # every channel as decoded, averaged here: ffmpeg's own downmix (-ac 1) weights a 5.1 track's channels
    # by surround mix levels without normalising, where the references (VGGish, librosa) take the mean
    channels = max(1, info.channels or 1)
    stream = _input(path, start, duration).output(
        "pipe:", format="f32le", acodec="pcm_f32le", ac=channels, ar=int(sample_rate), map="0:a:0")
    out, err = _run(stream, "audio", path, timeout)
    wave = np.frombuffer(out, dtype="<f4")
    if channels > 1:
        n = wave.size // channels
        wave = wave[: n * channels].reshape(n, channels).mean(axis=1, dtype=np.float64)
    wave = wave.astype(np.float32, copy=True)
    stream_s = info.audio_duration or info.duration  # the audio track may be shorter than the video
    check_complete(wave.size / sample_rate, segment_seconds(stream_s, start, duration),
                   _stderr_tail(err, 160, path), "audio")
    return wave


def decode_frames(path: str | os.PathLike, fps: float, size: int | tuple[int, int] | None = None,
                  start: float | None = None, duration: float | None = None,
                  info: MediaInfo | None = None, timeout: float | None = None) -> np.ndarray:
    """Sample frames at `fps` while decoding, resized to `size` (w, h), or at the native display size
    when `size` is None; uint8 RGB `[T, H, W, 3]`. A clip (or still image) too short for one sample at
    `fps` gives its first frame."""
    path = Path(path)
    info = info or probe(path, timeout)
    width, height = frame_size(info, size)

    def decode(sampled: bool) -> tuple[np.ndarray, bytes]:
        video = _input(path, start, duration, flags="+bitexact").video  # as PyAV's decoder: no per-CPU IDCT variants
        video = video.filter("fps", fps=fps) if sampled else video
        out_kw = {} if sampled else {"frames:v": 1}
        stream = video.filter("scale", width, height).output("pipe:", format="rawvideo", pix_fmt="rgb24", **out_kw)
        out, err = _run(stream, "video", path, timeout)
        n = len(out) // (width * height * 3)
        return np.frombuffer(out[: n * width * height * 3], dtype=np.uint8).reshape(n, height, width, 3).copy(), err

    frames, err = decode(sampled=True)
    if frames.shape[0] == 0 and not err.strip():
        frames, err = decode(sampled=False)
        if frames.shape[0]:
            return frames
    n = frames.shape[0]
    stream_s = info.video_duration or info.duration
    # fps sampling rounds to whole frames: allow one frame of slack before calling it truncated
    check_complete((n + 1) / fps if n else 0.0, segment_seconds(stream_s, start, duration),
                   _stderr_tail(err, 160, path), "video")
    return frames
