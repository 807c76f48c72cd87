"""The toy corpus (csv_corpus.py) feeds `pipeline run extract` through its stages.yaml's `plugins:` line; an index
row whose path leaves the dataset root gets one clear message and writes nothing."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def pipeline(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert (proc.returncode == 0) == ok, f"pipeline {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def corpus(tmp_path: Path, rows: list[str]) -> Path:
    data = tmp_path / "data"
    (data / "tones").mkdir(parents=True)
    for i, freq in enumerate((220, 440, 880)):
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"sine=frequency={freq}:duration=1.5",
                        "-ar", "16000", str(data / "tones" / f"t{i}.wav")], check=True)
    (data / "index.csv").write_text("file,label,split\n" + "".join(f"{r}\n" for r in rows))
    config = tmp_path / "stages.yaml"
    shutil.copy(HERE / "stages.yaml", config)
    return config


def test_toy_corpus_is_extracted_from_its_index(tmp_path):
    from pipeline import open_store

    config = corpus(tmp_path, ["tones/t0.wav,low,train", "tones/t1.wav,mid,train", "tones/t2.wav,high,test"])
    pipeline("run", "extract", "--config", str(config), "--stage", "logmel")
    audio = open_store(dataset="listed", stage="audio", config=config)
    assert sorted(audio.clip_ids) == ["tones/t0", "tones/t1", "tones/t2"]
    wave = audio["tones/t1"]  # the 440 Hz tone: its spectrum peaks at 440 Hz
    assert abs(np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave) - 440) < 2
    status = pipeline("status", "--config", str(config)).stdout
    assert "logmel  up to date" in status


def test_an_index_path_outside_the_root_is_refused_with_its_line(tmp_path):
    config = corpus(tmp_path, ["tones/t0.wav,low,train", "../secret.wav,low,train"])
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    proc = pipeline("run", "extract", "--config", str(config), ok=False)
    assert "index.csv line 3: path '../secret.wav' escapes the dataset root" in proc.stderr
    assert not (tmp_path / "cache" / "stores").exists() or not any((tmp_path / "cache" / "stores").iterdir())
