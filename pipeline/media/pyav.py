"""The `pyav` media backend: the FFmpeg libraries in-process through PyAV, with the filter graph the
ffmpeg CLI builds for the `ffmpeg` backend's commands, so both give the same arrays.

What the ffmpeg CLI (5.1, the `ffmpeg` backend's) does and this module repeats:
- input `-ss S`: seek to S + the file's start time (3/23 s earlier when a stream reorders frames and the
  format does not seek by pts), shift every timestamp by -(S + start time), and trim from 0;
  input `-t D`: trim to D seconds from there (`trim` / `atrim`);
- audio: decoded frames' timestamps rescaled to 1/sample_rate as `av_rescale_delta` does, then
  `aresample` to the rate and `aformat` to packed float with the input's own channels;
- video: frames timed by their best-effort timestamp, the display matrix applied as the CLI's autorotate
  does (transpose clock / cclock, hflip + vflip, or rotate), then `fps`, `scale` (bicubic) and
  `format=rgb24`;
- a packet that does not decode is logged and skipped, a read error ends the input, and more than 2/3 of
  packets failing makes the file a decode error (the CLI's -max_error_rate).
"""
from __future__ import annotations

import contextlib
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .common import (
    MISSING_INDEX,
    MediaError,
    MediaInfo,
    check_audio,
    check_complete,
    check_readable,
    frame_size,
    has_mp4_header,
    readable_log,
    segment_seconds,
)

NAME = "pyav"
_TIME_BASE = 1_000_000  # AV_TIME_BASE: container timestamps are in microseconds
_SEEK_TO_PTS = 0x4000000  # AVFMT_SEEK_TO_PTS
_ATTACHED_PIC = 0x400  # AV_DISPOSITION_ATTACHED_PIC: cover art, not video


_LOGGING_SET = False


def _av() -> Any:
    global _LOGGING_SET
    import av
    import av.logging

    if not _LOGGING_SET:
        if av.logging.get_level() is None:  # libav messages reach Capture (they carry the failure reasons)
            av.logging.set_level(av.logging.WARNING)
        # every file's own messages: a decoder process serves many files, and "moov atom not found" for the
        # second cut file must not be dropped as a repeat of the first's
        av.logging.set_skip_repeated(False)
        _LOGGING_SET = True
    return av


@contextlib.contextmanager
def _opened(path: Path, logs: list[str]) -> Iterator[Any]:
    """The container, open, with what libav says meanwhile collected into `logs` (not printed); a file
    libav cannot parse raises MediaError with what it said."""
    av = _av()
    check_readable(path)
    with av.logging.Capture() as captured:
        try:
            container = av.open(str(path), metadata_errors="ignore")
        except av.FFmpegError as e:
            said = [_line(m) for m in captured] + [e.strerror or str(e)]
            msg = readable_log(said, path=path)
            if "moov atom not found" in msg and has_mp4_header(path):
                raise MediaError(MISSING_INDEX) from None
            raise MediaError(f"corrupt container: libavformat cannot parse it ({msg})") from None
        try:
            yield container
        finally:
            logs[:0] = [_line(m) for m in captured if m[0] <= av.logging.ERROR]
            container.close()


def _line(message: tuple[int, str, str]) -> str:
    _, who, text = message
    return f"[{who} @ 0x0] {text}" if who else text


def _streams(container: Any) -> tuple[Any, Any]:
    audio = next(iter(container.streams.audio), None)
    video = next((s for s in container.streams.video if not s.disposition & _ATTACHED_PIC), None)
    return audio, video


def _seconds(value: Any, time_base: Any) -> float | None:
    return float(value * time_base) if value is not None and time_base else None


def _info(path: Path, container: Any, rotation: int = 0) -> MediaInfo:
    """What the container says; `rotation` comes from a decoded frame's display matrix (libav keeps it there)."""
    audio, video = _streams(container)
    durations = [d for d in [container.duration / _TIME_BASE if container.duration is not None else None]
                 + [_seconds(s.duration, s.time_base) for s in container.streams] if d is not None]
    fps = float(video.average_rate) if video is not None and video.average_rate else None
    actx = audio.codec_context if audio is not None else None
    return MediaInfo(
        path=path,
        duration=max(durations) if durations else None,
        audio_duration=_seconds(audio.duration, audio.time_base) if audio is not None else None,
        video_duration=_seconds(video.duration, video.time_base) if video is not None else None,
        has_audio=audio is not None,
        has_video=video is not None,
        sample_rate=int(actx.sample_rate) if actx is not None and actx.sample_rate else None,
        channels=int(actx.layout.nb_channels) if actx is not None and actx.layout.nb_channels else None,
        fps=fps,
        width=int(video.codec_context.width) if video is not None else None,
        height=int(video.codec_context.height) if video is not None else None,
        rotation=rotation,
    )


def _first_frame(container: Any, video: Any) -> Any:
    """The first decodable frame of `video` (it carries the display matrix), or None."""
    try:
        for frame in container.decode(video):
            return frame
    except _av().FFmpegError:
        return None
    return None


def _rotation(frame: Any) -> int:
    """Counter-clockwise degrees of the frame's display matrix, as ffprobe reports them."""
    try:
        return int(round(float(frame.rotation))) % 360 if frame is not None else 0
    except (AttributeError, TypeError, ValueError):
        return 0


def probe(path: str | os.PathLike) -> MediaInfo:
    """Probe a media file through libavformat; raise MediaError with a specific reason when it is unusable."""
    path = Path(path)
    with _opened(path, []) as container:
        _, video = _streams(container)
        return _info(path, container, _rotation(_first_frame(container, video)) if video is not None else 0)


class _Timing:
    """The ffmpeg CLI's input timing: seek point, timestamp offset and trim for `-ss start -t duration`."""

    def __init__(self, container: Any, start: float | None, duration: float | None) -> None:
        file_start = container.start_time if container.start_time is not None else 0
        self.timestamp = round((start or 0.0) * _TIME_BASE) + file_start  # what -ss seeks to, in microseconds
        self.offset_us = -self.timestamp  # added to every timestamp (without -ss: minus the file's start time)
        self.start = start
        self.duration = duration

    def seek(self, container: Any) -> None:
        if self.start is None:
            return
        target = self.timestamp
        if not container.format.flags & _SEEK_TO_PTS and any(
                s.type == "video" and s.codec_context.has_b_frames for s in container.streams):
            target -= 3 * _TIME_BASE // 23
        with contextlib.suppress(Exception):  # a file that cannot seek is decoded from its start, then trimmed
            container.seek(target, backward=True, any_frame=False)

    def offset(self, time_base: Fraction) -> int:
        return _rescale(self.offset_us, Fraction(1, _TIME_BASE), time_base)

    def trim_args(self) -> dict[str, str]:
        args = {}  # in seconds, exact to the microsecond as the CLI's (libavfilter 11 ignores `durationi`)
        if self.start is not None:
            args["start"] = "0"
        if self.duration is not None:
            args["duration"] = f"{round(self.duration * _TIME_BASE) / _TIME_BASE:.6f}"
        return args


def _rescale(value: int, src: Fraction, dst: Fraction, rounding: str = "near") -> int:
    """av_rescale_q_rnd: value * src / dst, rounded to nearest (halves away from zero), down or up."""
    exact = Fraction(value) * src / dst
    if rounding == "down":
        return math.floor(exact)
    if rounding == "up":
        return math.ceil(exact)
    return int(math.floor(abs(exact) + Fraction(1, 2))) * (1 if exact >= 0 else -1)


class _RescaleDelta:
    """av_rescale_delta, as the ffmpeg CLI times decoded audio: sample-exact continuation when it fits."""

    def __init__(self, in_tb: Fraction, fs_tb: Fraction) -> None:
        self.in_tb, self.fs_tb, self.last = in_tb, fs_tb, None

    def __call__(self, ts: int, samples: int) -> int:
        if self.last is not None and samples and self.in_tb > self.fs_tb:
            a = _rescale(2 * ts - 1, self.in_tb, self.fs_tb, "down") >> 1
            b = (_rescale(2 * ts + 1, self.in_tb, self.fs_tb, "up") + 1) >> 1
            if 2 * a - b <= self.last <= 2 * b - a:
                this = min(max(self.last, a), b)
                self.last = this + samples
                return this
        self.last = _rescale(ts, self.in_tb, self.fs_tb) + samples
        return self.last - samples


class _Errors:
    """Decode errors met on the way, which the CLI logs and goes past (a cut file decodes up to its cut)."""

    def __init__(self, logs: list[str]) -> None:
        self.logs, self.decoded, self.failed = logs, 0, 0  # packets that decoded, and that did not

    def check(self, what: str, path: Path) -> None:
        # the CLI's -max_error_rate (2/3): past it, the file is a decode error rather than short media
        if self.failed and self.failed > (self.decoded + self.failed) * 2 / 3:
            raise MediaError(f"decode error: libav could not decode the {what} ({readable_log(self.logs, path=path)})")


def _decoded(container: Any, stream: Any, shift: int, errors: _Errors) -> Iterator[Any]:
    """Decode `stream`'s packets with `shift` added to their timestamps (the CLI's input offset); a packet
    that does not decode is logged and skipped, and a read error ends the input, as in the CLI."""
    av = _av()
    ctx = stream.codec_context
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            packet = None
        except av.FFmpegError as e:
            errors.logs.append(f"error while reading the input: {e.strerror or e}")
            packet = None
        last = packet is None or not packet.size  # demux ends with an empty packet: it flushes the decoder
        if not last:
            if packet.pts is not None:
                packet.pts += shift
            if packet.dts is not None:
                packet.dts += shift
        try:
            frames = ctx.decode(packet)
        except av.EOFError:
            return
        except av.FFmpegError as e:
            errors.logs.append(f"error while decoding: {e.strerror or e}")
            errors.failed += 1
            frames = []
        else:
            errors.decoded += not last
        yield from frames
        if last:
            return


def _graph(nodes: list[tuple[str, Any]], source: Any) -> tuple[Any, Any]:
    """A configured filter graph: `source(graph)`, then `nodes` as (filter, args string or dict) in a chain."""
    av = _av()
    graph = av.filter.Graph()
    chain = [source(graph)] + [graph.add(name, args if isinstance(args, str) else
                                         ":".join(f"{k}={v}" for k, v in args.items()) or None)
                               for name, args in nodes]
    graph.link_nodes(*chain).configure()
    return graph, chain[0]


def _push(graph: Any, src: Any, frame: Any, into: list[Any]) -> bool:
    """Feed one frame (None: the end) and collect what comes out; False once the graph wants no more
    (a trim reached its end)."""
    av = _av()
    try:
        src.push(frame)
    except av.EOFError:
        return False
    finally:
        _pull(graph, into)
    return True


def _pull(graph: Any, into: list[Any]) -> None:
    av = _av()
    while True:
        try:
            into.append(graph.pull())
        except (av.BlockingIOError, av.EOFError):
            return


def decode_audio(path: str | os.PathLike, sample_rate: int, start: float | None = None,
                 duration: float | None = None, info: MediaInfo | None = None) -> np.ndarray:
    """Decode the first audio stream to mono float32 in [-1, 1] at `sample_rate`, channels averaged."""
    path = Path(path)
    logs: list[str] = []
    with _opened(path, logs) as container:
        info = info or _info(path, container)
        check_audio(info)
        stream, _ = _streams(container)
        ctx = stream.codec_context
        ctx.thread_count = 1  # one clip per decoder process: threads would only compete
        timing = _Timing(container, start, duration)
        rate = Fraction(1, ctx.sample_rate)
        nodes: list[tuple[str, Any]] = []
        if timing.trim_args():
            nodes.append(("atrim", timing.trim_args()))
        nodes += [("aresample", str(int(sample_rate))),
                  ("aformat", {"sample_fmts": "flt", "sample_rates": str(int(sample_rate))}),
                  ("abuffersink", {})]
        graph = None
        out: list[Any] = []
        rescale = _RescaleDelta(stream.time_base, rate)
        errors = _Errors(logs)
        timing.seek(container)
        for frame in _decoded(container, stream, timing.offset(stream.time_base), errors):
            if graph is None:  # from the first frame: its format and layout, as the CLI configures it
                graph, src = _graph(nodes, lambda g: g.add_abuffer(
                    format=frame.format.name, sample_rate=frame.sample_rate, layout=frame.layout.name,  # noqa: B023 (_graph calls it at once)
                    time_base=rate))
            if frame.pts is not None:
                frame.pts = rescale(frame.pts, frame.samples)
            frame.time_base = rate
            if not _push(graph, src, frame, out):
                break
        if graph is not None:
            _push(graph, src, None, out)
        channels = max(1, info.channels or 1)
        wave = (np.concatenate([f.to_ndarray().reshape(-1) for f in out]) if out
                else np.zeros(0, np.float32)).astype("<f4", copy=False)
        if channels > 1:
            n = wave.size // channels
            wave = wave[: n * channels].reshape(n, channels).mean(axis=1, dtype=np.float64)
        wave = wave.astype(np.float32, copy=True)
    errors.check("audio", path)  # after the container closed: `logs` then holds what libav said too
    stream_s = info.audio_duration or info.duration
    check_complete(wave.size / sample_rate, segment_seconds(stream_s, start, duration),
                   readable_log(logs, 160, path), "audio")
    return wave


def _rotate_nodes(rotation: int) -> list[tuple[str, Any]]:
    """The filters the ffmpeg CLI inserts for a display matrix of `rotation` degrees counter-clockwise."""
    theta = float(-rotation)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return [("transpose", "clock")]
    if abs(theta - 180) < 1:
        return [("hflip", {}), ("vflip", {})]
    if abs(theta - 270) < 1:
        return [("transpose", "cclock")]
    if abs(theta) > 1:
        return [("rotate", f"{theta:f}*PI/180")]
    return []


def _output_size(frame: Any, size: int | tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    turned = _rotation(frame) % 180 == 90  # the CLI transposes these (_rotate_nodes)
    return (frame.height, frame.width) if turned else (frame.width, frame.height)


def _frame_filters(frame: Any, size: int | tuple[int, int] | None, timing: _Timing) -> list[tuple[str, Any]]:
    """Rotation, trim, then (the last three) scale, rgb24, sink: the CLI's chain around the `fps` filter."""
    filters = _rotate_nodes(_rotation(frame))
    if timing.trim_args():
        filters.append(("trim", timing.trim_args()))
    width, height = _output_size(frame, size)
    return filters + [("scale", f"{width}:{height}"), ("format", "rgb24"), ("buffersink", {})]


def _video_source(graph: Any, frame: Any, stream: Any) -> Any:
    sar = stream.codec_context.sample_aspect_ratio or Fraction(0, 1)
    return graph.add("buffer", f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}"
                               f":time_base={stream.time_base}:pixel_aspect={sar.numerator}/{sar.denominator}"
                               f":colorspace={int(frame.colorspace)}:range={int(frame.color_range)}")


class _BestEffortTimestamp:
    """libavcodec's guess_correct_pts, which the ffmpeg program times frames by and PyAV does not expose: a frame's
    pts, unless pts values have run backwards more often than dts values (an AVI with packed B-frames, whose
    guessed pts come out of order), then its dts."""

    def __init__(self) -> None:
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts = self.last_dts = -(1 << 63)

    def __call__(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self.faulty_dts += dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.faulty_pts += pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts


def decode_frames(path: str | os.PathLike, fps: float, size: int | tuple[int, int] | None = None,
                  start: float | None = None, duration: float | None = None,
                  info: MediaInfo | None = None) -> np.ndarray:
    """Sample frames at `fps` while decoding, resized to `size` (w, h), or at the native display size
    when `size` is None; uint8 RGB `[T, H, W, 3]`. A clip (or still image) too short for one sample at
    `fps` gives its first frame."""
    path = Path(path)
    logs: list[str] = []
    with _opened(path, logs) as container:
        info = info or _info(path, container)
        frame_size(info, size)  # no video: says so before decoding anything
        _, stream = _streams(container)
        ctx = stream.codec_context
        ctx.thread_count = 1  # one clip per decoder process: threads would only compete
        ctx.flags |= _av().codec.context.Flags.bitexact  # as the CLI's -flags +bitexact: no per-CPU IDCT variants
        timing = _Timing(container, start, duration)
        graph = None
        out: list[Any] = []
        first = None
        errors = _Errors(logs)
        timing.seek(container)
        best_effort = _BestEffortTimestamp()
        # AVI stores no presentation times: FFmpeg 8's demuxer guesses some (out of order after packed B-frames),
        # FFmpeg 5.1's, which the ffmpeg program is, leaves them out, so frames are timed by their dts
        guessed = "avi" in container.format.name.split(",")
        for frame in _decoded(container, stream, timing.offset(stream.time_base), errors):
            pts = best_effort(None if guessed else frame.pts, frame.dts)
            if pts is None:
                continue
            frame.pts = pts
            frame.time_base = stream.time_base
            if graph is None:  # from the first frame: its format, size and display matrix
                first = frame
                filters = _frame_filters(frame, size, timing)
                graph, src = _graph(filters[:-3] + [("fps", f"fps={fps}:start_time=0")] + filters[-3:],
                                    lambda g: _video_source(g, frame, stream))  # noqa: B023 (_graph calls it at once)
            if not _push(graph, src, frame, out):
                break
        if graph is not None:
            _push(graph, src, None, out)
        if not out and first is not None and not errors.failed:
            # too short for one sample at `fps` (a still picture): its first frame, as the CLI's `-frames:v 1`
            graph, src = _graph(_frame_filters(first, size, timing), lambda g: _video_source(g, first, stream))
            _push(graph, src, first, out)
            _push(graph, src, None, out)
            if out:
                return out[0].to_ndarray()[None]
        width, height = frame_size(info, size) if first is None else _output_size(first, size)
        frames = np.stack([f.to_ndarray() for f in out]) if out else np.zeros((0, height, width, 3), np.uint8)
    errors.check("video", path)
    n = frames.shape[0]
    stream_s = info.video_duration or info.duration
    # fps sampling rounds to whole frames: allow one frame of slack before calling it truncated
    check_complete((n + 1) / fps if n else 0.0, segment_seconds(stream_s, start, duration),
                   readable_log(logs, 160, path), "video")
    return frames
