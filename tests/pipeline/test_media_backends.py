"""The two media backends give the same arrays; a file that crashes or hangs the decoder fails alone."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.media import MediaError, decode_audio, decode_frames, probe

V = ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=3"]


def _a(rate: int, source: str = "sine=frequency=440") -> list[str]:
    return ["-f", "lavfi", "-i", f"{source}:sample_rate={rate}:duration=3"]


H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
KINDS = {  # container + codecs the issue names: name -> ffmpeg arguments
    "h264_aac.mp4": V + _a(44100) + H264 + ["-c:a", "aac"],
    "vp9_opus.mkv": V + _a(48000) + ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus"],
    "mjpeg_pcm.avi": V + _a(22050) + ["-c:v", "mjpeg", "-c:a", "pcm_s16le"],
    "surround.mov": V + ["-f", "lavfi", "-i", "anoisesrc=d=3:r=48000", "-filter_complex",
                         "[1:a]pan=5.1|c0=c0|c1=0.5*c0|c2=0.2*c0|c3=0.1*c0|c4=0.7*c0|c5=0.3*c0[a]",
                         "-map", "0:v", "-map", "[a]"] + H264 + ["-c:a", "aac"],
    "mp3.mkv": _a(44100) + ["-c:a", "libmp3lame"],
    "vfr.mp4": V + ["-vf", "setpts='if(lt(N,30),PTS,PTS*2.5)'", "-vsync", "vfr"] + H264,
    "bframes.mp4": V + _a(44100) + ["-c:v", "libx264", "-preset", "medium", "-bf", "2", "-pix_fmt", "yuv420p",
                                    "-c:a", "aac"],
    # MPEG-4 Part 2 in AVI: FFmpeg's own encoder, DivX 3 (msmpeg4v3: the libraries' IDCTs differ by one level
    # unless both decode bitexact), XviD with packed B-frames and H.264 with B-frames (AVI has no pts: FFmpeg 8
    # guesses them out of order, and a frame must be timed by its best-effort timestamp, as the ffmpeg program does)
    "mpeg4.avi": V + _a(22050) + ["-c:v", "mpeg4", "-bf", "2", "-q:v", "5", "-c:a", "pcm_s16le"],
    "msmpeg4v3.avi": V + ["-c:v", "msmpeg4v3", "-q:v", "5"],
    "xvid_packed.avi": ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=5:duration=3", "-c:v", "libxvid", "-bf", "1",
                        "-q:v", "5"],
    "h264_bframes.avi": V + ["-c:v", "libx264", "-preset", "medium", "-bf", "3", "-pix_fmt", "yuv420p"],
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kinds")
    out = {}
    for name, args in KINDS.items():
        out[name] = root / name
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, "file:" + str(out[name])], check=True)
    # a phone-style clip: the rotation lives in the display matrix (stream copy keeps it)
    out["rotated.mp4"] = root / "rotated.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(out["h264_aac.mp4"]), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(out["rotated.mp4"])], check=True)
    return out


def _both(fn, *args, **kwargs):
    results = []
    for backend in ("pyav", "ffmpeg"):
        try:
            results.append(fn(*args, backend=backend, **kwargs))
        except MediaError as e:
            results.append(e.reason.split(":")[0])
    return results


# Matroska with Opus: FFmpeg 5.1 (Debian's ffmpeg) starts the file at -7 ms (the Opus codec delay), FFmpeg 8
# (PyAV's) at 0, so every timestamp differs by 7 ms; and MP3 after a seek keeps a few samples more. Those two
# come from the libraries' versions, not from how either backend drives them (docs/media.md).
LIBRARY_VERSION_DIFFERENCES = {("vp9_opus.mkv", "segment"), ("mp3.mkv", "segment")}


@pytest.mark.parametrize("name", [*KINDS, "rotated.mp4"])
@pytest.mark.parametrize("segment", [None, (0.5, 1.3)], ids=["whole", "segment"])
def test_backends_give_equal_audio(media, name, segment):
    start, duration = segment or (None, None)
    a, b = _both(decode_audio, media[name], 16000, start=start, duration=duration)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b == "no audio stream"  # the same reason, whatever the backend
        return
    if (name, "segment" if segment else "whole") in LIBRARY_VERSION_DIFFERENCES:
        assert abs(len(a) - len(b)) <= 0.01 * 16000  # within 10 ms
        return
    assert len(a) == len(b) and len(a) > 0.5 * 16000
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", [*KINDS, "rotated.mp4"])
@pytest.mark.parametrize("fps, size", [(1.0, None), (2.5, (40, 30))])
@pytest.mark.parametrize("segment", [None, (0.5, 1.3)], ids=["whole", "segment"])
def test_backends_give_identical_frames(media, name, fps, size, segment):
    start, duration = segment or (None, None)
    a, b = _both(decode_frames, media[name], fps, size, start=start, duration=duration)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b == "no video stream"
        return
    assert a.shape == b.shape and a.shape[0] >= 1
    assert np.array_equal(a, b)
    if name == "rotated.mp4" and size is None:
        assert a.shape[1:3] == (64, 48)  # turned upright, as ffmpeg shows it


def test_backends_probe_alike(media):
    for name, path in media.items():
        a, b = _both(probe, path)
        assert (a.has_audio, a.has_video, a.sample_rate, a.channels, a.width, a.height, a.rotation) == \
               (b.has_audio, b.has_video, b.sample_rate, b.channels, b.width, b.height, b.rotation), name
        assert a.duration == pytest.approx(b.duration, abs=0.01), name
    assert probe(media["surround.mov"]).channels == 6 and probe(media["rotated.mp4"]).rotation == 90


def test_a_still_picture_gives_its_frame_with_both_backends(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 10)).save(tmp_path / "still.png")
    a, b = _both(decode_frames, tmp_path / "still.png", 1.0)
    assert a.shape == b.shape == (1, 30, 40, 3) and np.array_equal(a, b)
    assert tuple(a[0, 5, 5]) == (200, 30, 10)


def _decoder(monkeypatch, timeout=None):
    from pipeline.media import isolated

    monkeypatch.setattr(isolated, "PYAV_MODULE", "tests.pipeline.faulty_decoder")
    return isolated.Decoder(isolated.PYAV_MODULE, timeout, 1)


def test_a_file_that_crashes_the_decoder_fails_alone(tmp_path, clip_factory, monkeypatch):
    good = clip_factory(tmp_path / "good.mp4")
    crash = clip_factory(tmp_path / "crash.mp4")
    dec = _decoder(monkeypatch)
    try:
        first = dec.decode_audio(good, 16000)
        with pytest.raises(MediaError, match=r"^decoder crashed: .*killed by signal SIGSEGV"):
            dec.decode_audio(crash, 16000)
        np.testing.assert_array_equal(dec.decode_audio(good, 16000), first)  # a fresh process took over
        with pytest.raises(MediaError, match="^no video stream"):  # the backend's own reasons come through
            dec.decode_frames(clip_factory(tmp_path / "a.wav", video=False), 1.0)
    finally:
        dec.close()


@pytest.mark.parametrize("kill", ["SIGKILL", "SIGTERM"])
def test_a_decoder_process_that_dies_while_idle_does_not_fail_the_next_clip(tmp_path, clip_factory, kill):
    """The OOM killer (or anyone) ends an idle decoder process: the next healthy clip decodes in a fresh one."""
    import os
    import signal
    import time

    from pipeline.media.isolated import PYAV_MODULE, Decoder

    good = clip_factory(tmp_path / "good.mp4")
    dec = Decoder(PYAV_MODULE, 60.0, 1)
    try:
        first = dec.decode_audio(good, 16000)
        (victim,) = dec._all
        os.kill(victim.proc.pid, getattr(signal, kill))
        while victim.proc.poll() is None:
            time.sleep(0.01)
        np.testing.assert_array_equal(dec.decode_audio(good, 16000), first)
        assert len(dec._all) == 1 and dec._all[0] is not victim
    finally:
        dec.close()


def test_a_file_that_hangs_the_decoder_times_out(tmp_path, clip_factory, monkeypatch):
    good = clip_factory(tmp_path / "good.mp4")
    hang = clip_factory(tmp_path / "hang.mp4")
    dec = _decoder(monkeypatch, timeout=3.0)
    try:
        dec.probe(good)  # the process is up: the timeout measures decoding, not start-up
        with pytest.raises(MediaError, match=r"^decoder hung: no result in 3 s"):
            dec.decode_audio(hang, 16000)
        assert dec.decode_audio(good, 16000).size > 8000
    finally:
        dec.close()


def test_the_ffmpeg_backend_times_out_too(tmp_path):
    from pipeline.media.ffmpeg_cli import _exec

    with pytest.raises(MediaError, match=r"^decoder hung: ffmpeg gave no result in 0.5 s"):
        _exec(["sleep", "30"], timeout=0.5)


def _audio_project(tmp_path: Path, data: Path) -> Path:
    """A stages.yaml with the `audio` stage over a folder dataset at `data`, one worker, one shard."""
    from tests.conftest import write_config

    return write_config(tmp_path / "stages.yaml", tmp_path / "cache", {"f": {"adapter": "folder", "root": str(data)}},
                        {"audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000}}},
                        execution={"workers": 1, "shard_size": 8, "progress": False})


def test_a_crashing_file_fails_alone_in_a_run(tmp_path, clip_factory, monkeypatch):
    import json

    from pipeline import run

    monkeypatch.setattr("pipeline.media.isolated.PYAV_MODULE", "tests.pipeline.faulty_decoder")
    data = tmp_path / "data"
    for i, name in enumerate(("a.mp4", "b.mp4", "crash.mp4")):  # distinct files: identical ones share one row
        clip_factory(data / "x" / name, freq=300 + 200 * i)
    cfg = _audio_project(tmp_path, data)
    [rep] = run("extract", config=cfg)
    assert (rep.computed, rep.failed) == (2, 1)
    failures = [json.loads(x) for x in (rep.failures_log).read_text().splitlines()]
    assert [f["reason"].split(":")[0] for f in failures] == ["decoder crashed"]


def test_the_backend_is_recorded_and_keys_its_stores(project):
    from pipeline import open_store, run

    [pyav] = run("extract", stage="audio", config=project)
    [ffmpeg] = run("extract", stage="audio", config=project, media_backend="ffmpeg")
    assert pyav.store_path != ffmpeg.store_path and pyav.computed == ffmpeg.computed == 6
    a, b = open_store(pyav.store_path), open_store(ffmpeg.store_path)
    assert (a.attrs["media_backend"], b.attrs["media_backend"]) == ("pyav", "ffmpeg")
    for clip in a.clip_ids:
        np.testing.assert_allclose(a[clip], b[clip], rtol=0, atol=1e-6)
    [again] = run("extract", stage="audio", config=project, media_backend="ffmpeg")
    assert again.computed == 0 and again.store_path == ffmpeg.store_path  # switching back reuses


def test_each_file_keeps_its_own_reason_in_a_long_lived_decoder(tmp_path, clip_factory):
    # libav drops a message that repeats the one before; a decoder process serves many files, so the second
    # cut file's "moov atom not found" must still reach its reason
    reasons = []
    for i in range(2):
        whole = clip_factory(tmp_path / f"whole{i}.mp4", seconds=2.0, freq=300 + 200 * i, faststart=False)
        cut = tmp_path / f"cut{i}.mp4"
        cut.write_bytes(whole.read_bytes()[:3000])
        with pytest.raises(MediaError) as e:
            decode_audio(cut, 16000)
        reasons.append(e.value.reason)
    assert all(r.startswith("truncated file: the container starts correctly") for r in reasons), reasons


def test_a_file_mostly_corrupt_inside_is_a_decode_error_with_both_backends(tmp_path):
    # the index intact, 30% of the media bytes random: the CLI (and so the pyav backend) goes past bad
    # packets, and calls the file a decode error when more than 2/3 of them fail
    src = tmp_path / "src.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *V, *_a(44100), *H264, "-c:a", "aac",
                    "-movflags", "+faststart", "file:" + str(src)], check=True)
    data = bytearray(src.read_bytes())
    start = data.find(b"mdat") + 4
    rng = np.random.default_rng(0)
    for j in rng.choice(len(data) - start, int(0.3 * (len(data) - start)), replace=False) + start:
        data[j] = rng.integers(0, 256)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    assert _both(decode_audio, bad, 16000) == ["decode error", "decode error"]
    assert _both(decode_frames, bad, 1.0, 32) == ["decode error", "decode error"]


def test_failures_that_may_not_recur_are_retried_and_the_others_only_when_asked(tmp_path, clip_factory, monkeypatch):
    """A decoder crash is recorded as transient and the next run retries it (here it decodes: the crash was the
    decoder's, not the file's); a file with no audio is the file's own failure: retried only with --retry-failed
    or when the file changes. Status counts both kinds."""
    import json

    from pipeline import run
    from pipeline.config import load_config
    from pipeline.runner import status

    data = tmp_path / "data"
    for i, name in enumerate(("a.mp4", "crash.mp4")):  # distinct files: identical ones share one row
        clip_factory(data / "x" / name, freq=300 + 200 * i)
    clip_factory(data / "x" / "silent.mp4", audio=False)
    cfg = _audio_project(tmp_path, data)
    with monkeypatch.context() as m:
        m.setattr("pipeline.media.isolated.PYAV_MODULE", "tests.pipeline.faulty_decoder")
        [rep] = run("extract", config=cfg)
    assert (rep.computed, rep.failed) == (1, 2)
    failures = {f["id"]: f for f in map(json.loads, (rep.failures_log).read_text().splitlines())}
    assert failures["x/crash"]["transient"] is True and failures["x/silent"]["transient"] is False
    [row] = status(load_config(cfg), None)
    assert (row["state"], row["failed"], row["transient"]) == ("up to date", 2, 1)
    from tests.conftest import cli

    out = cli("status", "--config", str(cfg)).stdout
    assert "(2 failed: 1 for good, 1 may pass on a retry" in out

    [again] = run("extract", config=cfg)  # the crash was the decoder's: this time the file decodes
    assert (again.retried, again.computed, again.failed) == (1, 1, 1)
    assert json.loads((again.failures_log).read_text())["id"] == "x/silent"
    [noop] = run("extract", config=cfg)
    assert (noop.retried, noop.computed, noop.shards_computed) == (0, 0, 0)  # a file's own failure is not retried
    [forced] = run("extract", config=cfg, retry_failed=True)
    assert (forced.retried, forced.computed, forced.failed) == (1, 0, 1)  # asked for: decoded again, fails again
    assert run("extract", config=cfg)[0].shards_computed == 0
