"""Shared fixtures: tiny real media made with ffmpeg, and a project (stages.yaml + cache) in tmp."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow start-up chatter

SHAPES = {"n_images": 8, "captions_per_image": 2, "n_val": 2, "n_test": 2, "size": 32, "seed": 0}
TINY = {"n_classes": 2, "clips_per_class": 3, "duration": 1.0, "size": 32, "fps": 5, "seed": 0, "n_folds": 3}


def make_clip(path: Path, seconds: float = 1.0, freq: float = 440.0, audio: bool = True, video: bool = True,
              faststart: bool = True) -> Path:
    """Write a real mp4 (H.264 + AAC) or, without video, a wav with ffmpeg's lavfi sources."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size=32x32:rate=5:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=16000:duration={seconds}"]
    if video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio and video:
        args += ["-c:a", "aac"]
    if faststart and video:
        args += ["-movflags", "+faststart"]
    args += ["-t", str(seconds), "file:" + str(path)]
    subprocess.run(args, check=True)
    return path


@pytest.fixture(scope="session")
def clip_factory() -> Callable[..., Path]:
    return make_clip


@pytest.fixture(scope="session")
def tiny_synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic set, generated once per test session and shared read-only."""
    from pipeline.datasets.synthetic import SyntheticConfig, SyntheticDataset

    root = tmp_path_factory.mktemp("data") / "tiny"
    SyntheticDataset("tiny", root, SyntheticConfig(**TINY)).prepare()
    return root


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny spoken-caption corpus (8 pictures x 2 espeak-ng captions), generated once per test session."""
    from pipeline.datasets.spoken_shapes import SpokenShapesConfig, SpokenShapesDataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    SpokenShapesDataset("shapes", root, SpokenShapesConfig(**SHAPES)).prepare()
    return root


def write_config(path: Path, cache: Path, datasets: dict[str, Any], stages: dict[str, Any] | None = None,
                 **top: Any) -> Path:
    """Write a stages.yaml with the default audio -> logmel stages unless `stages` is given."""
    doc = {"cache": str(cache), "default_dataset": next(iter(datasets)),
           "execution": {"workers": 1, "shard_size": 2, "progress": False},
           "datasets": datasets,
           "stages": stages or {
               "audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000}},
               "logmel": {"group": "extract", "implementation": "logmel", "upstream": ["audio"],
                          "params": {"preset": "vggish"}}},
           **top}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path: Path, tiny_synthetic_root: Path) -> Path:
    """stages.yaml in tmp_path: the shared tiny synthetic set, a private cache."""
    return write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                        {"tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY}})


def cli(*args: str, cwd: Path | None = None, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    """Run the `pipeline` console entry point in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True,
                          text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
