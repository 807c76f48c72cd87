"""ffmpeg through ffmpeg-python: probe, decode mono audio, sample RGB frames while decoding.

Paths reach ffmpeg as `file:<absolute path>` list arguments (no shell), so spaces, quotes,
a leading dash, colons and non-ASCII names are all taken literally.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TRUNCATION_TOLERANCE = 0.9  # decoded/declared duration below this means the file was cut short


class MediaError(Exception):
    """A clip's media cannot be used; `reason` is what the failures log records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says about a file."""

    path: Path
    duration: float | None
    audio_duration: float | None
    video_duration: float | None
    has_audio: bool
    has_video: bool
    sample_rate: int | None
    channels: int | None
    fps: float | None
    width: int | None
    height: int | None
    rotation: int = 0

    @property
    def display_size(self) -> tuple[int, int] | None:
        """(width, height) of the frames ffmpeg outputs: rotation metadata applied, as ffmpeg does."""
        if not self.width or not self.height:
            return None
        return (self.height, self.width) if self.rotation % 180 == 90 else (self.width, self.height)


def _ffmpeg_path(path: Path) -> str:
    return "file:" + str(Path(path).absolute())


_LOG_PREFIX = re.compile(r"^\[(?P<who>[^\]@]+?)\s*@\s*0x[0-9a-f]+\]\s*")


def _stderr_tail(err: bytes | None, n: int = 300, path: Path | None = None) -> str:
    """What ffmpeg said, readable: whole lines, the `[mp3 @ 0x55d6...]` tags as `mp3:`, the file's own name
    dropped, repeats removed, and only the last lines that fit in `n` characters (never a cut word)."""
    lines: list[str] = []
    names = {str(path), _ffmpeg_path(path), path.name} if path is not None else set()
    for raw in (err or b"").decode("utf-8", "replace").splitlines():
        line = raw.strip()
        m = _LOG_PREFIX.match(line)
        if m:
            line = f"{m.group('who').strip()}: {line[m.end():]}"
        for name in sorted(names, key=len, reverse=True):
            if line.startswith(f"{name}: "):
                line = line[len(name) + 2:]
                break
        if line and line not in lines:
            lines.append(line)
    if not lines:
        return "no message"
    kept: list[str] = []
    for line in reversed(lines):
        if kept and sum(len(x) + 2 for x in kept) + len(line) > n:
            break
        kept.insert(0, line)
    text = "; ".join(kept)
    if len(text) > n:  # one very long line: cut at a word, and say so
        text = text[:n].rsplit(" ", 1)[0] + " ..."
    return text


def _has_mp4_header(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    return len(head) >= 8 and head[4:8] == b"ftyp"


def _check_readable(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        why = "is a broken symlink" if os.path.lexists(path) else "does not exist"
        raise MediaError(f"missing file: {path} {why}") from None
    except OSError as e:
        raise MediaError(f"unreadable file: {e.strerror or e} ({path})") from None
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise MediaError(f"unreadable file: {e.strerror or e} ({path})") from None
    if st.st_size == 0:
        raise MediaError(f"corrupt container: {path} is empty (0 bytes)")


def probe(path: str | os.PathLike) -> MediaInfo:
    """Probe a media file; raise MediaError with a specific reason when it is unusable."""
    path = Path(path)
    _check_readable(path)
    rc, out, err = _exec(["ffprobe", "-v", "warning", "-show_format", "-show_streams", "-of", "json",
                          _ffmpeg_path(path)])  # warnings and errors, no banner
    if rc == 0:
        info = json.loads(out.decode("utf-8", "replace"))
    else:
        msg = _stderr_tail(err, path=path) if rc > 0 else f"ffprobe was killed by signal {-rc}"
        if "moov atom not found" in msg and _has_mp4_header(path):
            raise MediaError("truncated file: the container starts correctly but its index "
                             "(moov atom) is missing, so the file was cut short") from None
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


def _exec(args: list[str]) -> tuple[int, bytes, bytes]:
    """Run ffmpeg or ffprobe: (exit code, stdout, stderr). In a session of its own, so that Ctrl-C at the
    terminal reaches only the pipeline (which lets running shards finish), never a decoder mid-clip,
    whose exit would otherwise be recorded as that clip's failure."""
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True)
    return proc.returncode, proc.stdout, proc.stderr


def _run(stream, what: str, path: Path) -> tuple[bytes, bytes]:
    rc, out, err = _exec(stream.global_args("-nostdin", "-hide_banner", "-loglevel", "error").compile())
    if rc != 0:
        why = _stderr_tail(err, path=path) if rc > 0 else f"ffmpeg was killed by signal {-rc}"
        raise MediaError(f"decode error: ffmpeg could not decode the {what} ({why})")
    return out, err


def _check_complete(decoded_s: float, declared: float | None, err: bytes, what: str, path: Path) -> None:
    if decoded_s <= 0:
        raise MediaError(f"zero duration: no {what} could be decoded")
    if declared and decoded_s < _TRUNCATION_TOLERANCE * declared:
        raise MediaError(f"truncated file: decoded {decoded_s:.2f} s of {what} out of the "
                         f"{declared:.2f} s the container declares ({_stderr_tail(err, 160, path)})")


def decode_audio(path: str | os.PathLike, sample_rate: int, start: float | None = None,
                 duration: float | None = None, info: MediaInfo | None = None) -> np.ndarray:
    """Decode the first audio stream to mono float32 in [-1, 1] at `sample_rate`, channels averaged
    (probes first)."""
    import ffmpeg

    path = Path(path)
    info = info or probe(path)
    if not info.has_audio:
        raise MediaError("no audio stream: the file has no audio track")
    if info.duration is not None and info.duration <= 0:
        raise MediaError("zero duration: the container declares 0 s")
    in_kw = {}
    if start is not None:
        in_kw["ss"] = start
    if duration is not None:
        in_kw["t"] = duration
    # every channel as decoded, averaged here: ffmpeg's own downmix (-ac 1) weights a 5.1 track's channels
    # by surround mix levels without normalising, where the references (VGGish, librosa) take the mean
    channels = max(1, info.channels or 1)
    stream = ffmpeg.input(_ffmpeg_path(path), **in_kw).output(
        "pipe:", format="f32le", acodec="pcm_f32le", ac=channels, ar=int(sample_rate), map="0:a:0")
    out, err = _run(stream, "audio", path)
    wave = np.frombuffer(out, dtype="<f4")
    if channels > 1:
        n = wave.size // channels
        wave = wave[: n * channels].reshape(n, channels).mean(axis=1, dtype=np.float64)
    wave = wave.astype(np.float32, copy=True)
    stream_s = info.audio_duration or info.duration  # the audio track may be shorter than the video
    _check_complete(wave.size / sample_rate, _segment(stream_s, start, duration), err, "audio", path)
    return wave


def _segment(total: float | None, start: float | None, duration: float | None) -> float | None:
    if total is None:
        return duration
    remaining = total - (start or 0.0)
    return min(remaining, duration) if duration is not None else remaining


def decode_frames(path: str | os.PathLike, fps: float, size: int | tuple[int, int] | None = None,
                  start: float | None = None, duration: float | None = None,
                  info: MediaInfo | None = None) -> np.ndarray:
    """Sample frames at `fps` while decoding, resized to `size` (w, h), or at the native display size
    when `size` is None; uint8 RGB `[T, H, W, 3]`. A clip (or still image) too short for one sample at
    `fps` gives its first frame."""
    import ffmpeg

    path = Path(path)
    info = info or probe(path)
    if not info.has_video or info.display_size is None:
        raise MediaError("no video stream: the file has no video track")
    if size is None:
        width, height = info.display_size
    else:
        width, height = (size, size) if isinstance(size, int) else size
    in_kw = {}
    if start is not None:
        in_kw["ss"] = start
    if duration is not None:
        in_kw["t"] = duration

    def decode(sampled: bool) -> tuple[np.ndarray, bytes]:
        video = ffmpeg.input(_ffmpeg_path(path), **in_kw).video
        video = video.filter("fps", fps=fps) if sampled else video
        out_kw = {} if sampled else {"frames:v": 1}
        stream = video.filter("scale", width, height).output("pipe:", format="rawvideo", pix_fmt="rgb24", **out_kw)
        out, err = _run(stream, "video", path)
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
    _check_complete((n + 1) / fps if n else 0.0, _segment(stream_s, start, duration), err, "video", path)
    return frames
