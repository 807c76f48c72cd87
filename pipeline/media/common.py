"""What both media backends share: the error, the probe result, the checks every decode makes, and
decoder messages made readable."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

BACKENDS = ("pyav", "ffmpeg")
DEFAULT_BACKEND = "pyav"
DEFAULT_TIMEOUT = 300.0  # seconds one clip may take to decode before it fails as hung
_MODULES = {"pyav": "pipeline.media.pyav", "ffmpeg": "pipeline.media.ffmpeg_cli"}
TRUNCATION_TOLERANCE = 0.9  # decoded/declared duration below this means the file was cut short


class MediaError(Exception):
    """A clip's media cannot be used; `reason` is what the failures log records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple:  # crosses process boundaries (decoder processes, workers) intact
        return (type(self), (self.reason,))


@dataclass(frozen=True)
class MediaInfo:
    """What the probe says about a file."""

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


_LOG_PREFIX = re.compile(r"^\[(?P<who>[^\]@]+?)\s*@\s*0x[0-9a-f]+\]\s*")


# failures that may not happen again with the same file: the decoder died or hung (memory, load), or the file
# could not be read (a mount, permissions). The others (no stream, corrupt container, too short, ...) are the
# file's: they happen again until its content (and so its digest and the clip's key) changes.
TRANSIENT_REASONS = ("decoder crashed", "decoder hung", "unreadable file", "missing file", "cannot read")


def is_transient(reason: str) -> bool:
    """Whether a clip's failure may not recur with the same file (a crash, a hang, an I/O error)."""
    return reason.startswith(TRANSIENT_REASONS)


def backend_module(name: str = DEFAULT_BACKEND) -> Any:
    """The module of media backend `name` (`probe`, `decode_audio`, `decode_frames`)."""
    import importlib

    if name not in _MODULES:
        raise ValueError(f"unknown media backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return importlib.import_module(_MODULES[name])


def ffmpeg_path(path: str | os.PathLike) -> str:
    """How a path reaches ffmpeg: `file:<absolute path>`, so no character in it is taken as syntax."""
    return "file:" + str(Path(path).absolute())


def readable_log(lines: Iterable[str], n: int = 300, path: Path | None = None) -> str:
    """Decoder messages, readable: whole lines, `[mp3 @ 0x55d6...]` tags as `mp3:`, the file's own name
    dropped, repeats removed, and only the last lines that fit in `n` characters (never a cut word)."""
    kept_lines: list[str] = []
    names = {str(path), ffmpeg_path(path), path.name} if path is not None else set()
    for raw in lines:
        line = raw.strip()
        m = _LOG_PREFIX.match(line)
        if m:
            line = f"{m.group('who').strip()}: {line[m.end():]}"
        for name in sorted(names, key=len, reverse=True):
            if line.startswith(f"{name}: "):
                line = line[len(name) + 2:]
                break
        if line and line not in kept_lines:
            kept_lines.append(line)
    if not kept_lines:
        return "no message"
    kept: list[str] = []
    for line in reversed(kept_lines):
        if kept and sum(len(x) + 2 for x in kept) + len(line) > n:
            break
        kept.insert(0, line)
    text = "; ".join(kept)
    if len(text) > n:  # one very long line: cut at a word, and say so
        text = text[:n].rsplit(" ", 1)[0] + " ..."
    return text


def has_mp4_header(path: Path) -> bool:
    """Whether the file starts like an MP4/MOV (an `ftyp` box): a cut one then lacks its index, not its start."""
    with open(path, "rb") as f:
        head = f.read(12)
    return len(head) >= 8 and head[4:8] == b"ftyp"


MISSING_INDEX = ("truncated file: the container starts correctly but its index (moov atom) is missing, "
                 "so the file was cut short")


def check_readable(path: Path) -> None:
    """Raise MediaError when the file is missing, unreadable or empty."""
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


def check_complete(decoded_s: float, declared: float | None, log: str, what: str) -> None:
    """Raise MediaError when nothing decoded, or much less than the container declares."""
    if decoded_s <= 0:
        raise MediaError(f"zero duration: no {what} could be decoded")
    if declared and decoded_s < TRUNCATION_TOLERANCE * declared:
        raise MediaError(f"truncated file: decoded {decoded_s:.2f} s of {what} out of the "
                         f"{declared:.2f} s the container declares ({log})")


def segment_seconds(total: float | None, start: float | None, duration: float | None) -> float | None:
    """How long [start, start + duration) of a `total`-second stream is."""
    if total is None:
        return duration
    remaining = total - (start or 0.0)
    return min(remaining, duration) if duration is not None else remaining


def frame_size(info: MediaInfo, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of the decoded frames: `size` (a side or (w, h)), else the display size."""
    if not info.has_video or info.display_size is None:
        raise MediaError("no video stream: the file has no video track")
    if size is None:
        return info.display_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_audio(info: MediaInfo) -> None:
    """Raise MediaError when the file has no audio to decode."""
    if not info.has_audio:
        raise MediaError("no audio stream: the file has no audio track")
    if info.duration is not None and info.duration <= 0:
        raise MediaError("zero duration: the container declares 0 s")
