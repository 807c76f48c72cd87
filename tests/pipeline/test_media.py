import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.media import BACKENDS, MediaError, decode_audio, decode_frames, probe


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every test taking it runs with both media backends: they must agree on arrays and reasons."""
    return request.param


def test_probe_and_decode_real_clip(tmp_path, clip_factory, backend):
    p = clip_factory(tmp_path / "a.mp4", seconds=2.0, freq=1000)
    info = probe(p, backend=backend)
    assert info.has_audio and info.has_video and abs(info.duration - 2.0) < 0.1
    wave = decode_audio(p, 16000, backend=backend)
    assert wave.dtype == np.float32 and wave.ndim == 1 and abs(wave.size - 32000) < 1600
    segment = wave[4000:20000]
    peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * 16000 / segment.size
    assert abs(peak_hz - 1000) < 5  # the 1 kHz tone survives decoding
    frames = decode_frames(p, fps=2, size=(24, 16), backend=backend)
    assert frames.dtype == np.uint8 and frames.shape == (4, 16, 24, 3)


def test_segment_decoding(tmp_path, clip_factory, backend):
    p = clip_factory(tmp_path / "a.mp4", seconds=2.0)
    assert abs(decode_audio(p, 8000, start=0.5, duration=1.0, backend=backend).size - 8000) < 400


@pytest.mark.parametrize("name", ["with space.mp4", "quote'\"s.mp4", "-leading-dash.mp4", "ünïcødé 音.mp4",
                                  "colon:name.mp4"])
def test_awkward_file_names(tmp_path, clip_factory, name, backend):
    p = clip_factory(tmp_path / name)
    assert decode_audio(p, 16000, backend=backend).size > 8000


def _reason(path, what="audio", backend="pyav"):
    with pytest.raises(MediaError) as e:
        if what == "audio":
            decode_audio(path, 16000, backend=backend)
        else:
            decode_frames(path, 2, 8, backend=backend)
    return e.value.reason


def test_each_bad_media_kind_has_its_own_reason(tmp_path, clip_factory, backend):
    ok = clip_factory(tmp_path / "ok.mp4", seconds=2.0)
    assert _reason(tmp_path / "missing.mp4", backend=backend).startswith("missing file")
    # seeded: a few random byte strings in a thousand parse as some container (an MPEG-TS or MP3 frame)
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(2000))
    assert _reason(tmp_path / "garbage.mp4", backend=backend).startswith("corrupt container")
    (tmp_path / "cut.mp4").write_bytes(ok.read_bytes()[: ok.stat().st_size // 3])
    assert _reason(tmp_path / "cut.mp4", backend=backend).startswith("truncated file")
    nofast = clip_factory(tmp_path / "nofast.mp4", seconds=2.0, faststart=False)
    (tmp_path / "cut2.mp4").write_bytes(nofast.read_bytes()[:3000])
    assert _reason(tmp_path / "cut2.mp4", backend=backend).startswith("truncated file")
    assert _reason(clip_factory(tmp_path / "silent.mp4", audio=False), backend=backend).startswith("no audio stream")
    assert _reason(clip_factory(tmp_path / "blind.wav", video=False), "video", backend=backend).startswith("no video stream")
    zero = clip_factory(tmp_path / "zero.wav", seconds=0, video=False)
    assert _reason(zero, backend=backend).startswith("zero duration")
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop)
    assert _reason(loop, backend=backend).startswith("unreadable file")
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        locked = clip_factory(tmp_path / "locked.mp4")
        locked.chmod(0)
        assert _reason(locked, backend=backend).startswith("unreadable file")


def test_short_soundtrack_is_not_truncation(tmp_path, backend):
    import subprocess

    p = tmp_path / "short_audio.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=32x32:rate=5:duration=4", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=16000:duration=1", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "file:" + str(p)], check=True)
    assert abs(decode_audio(p, 16000, backend=backend).size - 16000) <= 1024
    assert decode_frames(p, fps=1, size=8, backend=backend).shape[0] == 4


def test_a_clip_cut_to_three_quarters_is_truncated(tmp_path, clip_factory, backend):
    ok = clip_factory(tmp_path / "ok.mp4", seconds=4.0)
    (tmp_path / "cut.mp4").write_bytes(ok.read_bytes()[: int(ok.stat().st_size * 0.75)])
    assert _reason(tmp_path / "cut.mp4", backend=backend).startswith("truncated file: decoded")
    assert _reason(tmp_path / "cut.mp4", "video", backend=backend).startswith("truncated file: decoded")


def test_corrupt_container_reason_is_whole_and_readable(tmp_path, backend):
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"garbage!" * 300)
    reason = _reason(bad, backend=backend)
    who = {"pyav": "libavformat", "ffmpeg": "ffprobe"}[backend]
    assert reason.startswith(f"corrupt container: {who} cannot parse it (")
    assert reason.endswith("; Invalid data found when processing input)")  # whole lines, the last one last
    said = reason.split("(", 1)[1]  # what the library said: no pointers, no path, no version banner
    assert "@ 0x" not in said and str(tmp_path) not in said and "libav" not in said


def test_stderr_is_cut_at_lines_and_tags_are_named():
    from pipeline.media.ffmpeg_cli import _stderr_tail

    err = (b"[mp3 @ 0x55d6ffef71c0] Format mp3 detected only with low score of 1, misdetection possible!\n"
           b"[mp3 @ 0x55d6ffef71c0] Failed to read frame size: Could not seek to 1026.\n"
           b"file:/data/x.mp4: Invalid data found when processing input\n")
    assert _stderr_tail(err, path=Path("/data/x.mp4")) == (
        "mp3: Format mp3 detected only with low score of 1, misdetection possible!; "
        "mp3: Failed to read frame size: Could not seek to 1026.; Invalid data found when processing input")
    assert _stderr_tail(err, 80, Path("/data/x.mp4")) == "Invalid data found when processing input"


@pytest.mark.parametrize("layout, pan", [("stereo", "c0=c0|c1=c0"), ("5.1", "c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0")])
def test_multichannel_audio_is_the_mean_of_its_channels(tmp_path, layout, pan, backend):
    import subprocess

    mono = tmp_path / "mono.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
                    "-ac", "1", "file:" + str(mono)], check=True)
    multi = tmp_path / f"{layout}.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", "file:" + str(mono), "-af", f"pan={layout}|{pan}",
                    "file:" + str(multi)], check=True)
    assert probe(multi, backend=backend).channels == (2 if layout == "stereo" else 6)
    np.testing.assert_allclose(decode_audio(multi, 16000, backend=backend), decode_audio(mono, 16000, backend=backend),
                               atol=1e-6)


def test_decoders_run_in_a_session_of_their_own():
    import sys

    from pipeline.media.ffmpeg_cli import _exec

    # Ctrl-C at the terminal goes to the foreground process group: a decoder outside it is not killed
    # mid-clip (which would record that clip as failed for good)
    rc, out, _ = _exec([sys.executable, "-c", "import os; print(os.getsid(0))"])
    assert rc == 0 and int(out) != os.getsid(0)
