"""The toy extractor (zcr.py) computes a store through `pipeline run extract`, loaded by its stages.yaml's
`plugins:` line; its rows equal a brute-force count on the audio store's waveform."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def pipeline(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"pipeline {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_toy_extractor_fills_a_store_equal_to_brute_force(tmp_path):
    from pipeline import open_store

    config = tmp_path / "stages.yaml"
    shutil.copy(HERE / "stages.yaml", config)
    pipeline("run", "extract", "--config", str(config), "--stage", "zcr")

    zcr = open_store(next((tmp_path / "cache" / "stores").glob("zcr-*")))
    audio = open_store(next((tmp_path / "cache" / "stores").glob("audio-*")))
    assert len(zcr.clip_ids) == 4
    for cid in zcr.clip_ids:
        wave = audio[cid]
        frames = wave[: len(wave) // 1600 * 1600].reshape(-1, 1600)
        want = [sum((a < 0) != (b < 0) for a, b in zip(f[:-1], f[1:])) / 1599 for f in frames]
        np.testing.assert_allclose(zcr[cid][:, 0], want, atol=1e-6)
    assert zcr.attrs["frame_rate"] == 10.0

    assert "up to date" in pipeline("run", "extract", "--config", str(config), "--stage", "zcr")
