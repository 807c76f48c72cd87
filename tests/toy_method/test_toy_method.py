"""The toy method (toy.py: trainer, task, metric and report section in this folder) runs through `pipeline run`
and `pipeline report` as a user runs them, loaded by its stages.yaml's `plugins:` line."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def pipeline(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"pipeline {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def features(path: Path, seed: int = 0) -> None:
    """TNN-C-CCA's h5 layout: 3 classes; visual = a fixed linear map of audio plus noise, so ridge can learn it."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 6)) * 3
    mix = rng.standard_normal((6, 5))
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        for split, n in (("train", 18), ("test", 12)):
            labels = np.arange(n) % 3
            audio = centres[labels] + rng.standard_normal((n, 6))
            f["audio_" + split] = audio.astype(np.float32)
            f["visual_" + split] = (audio @ mix + 0.1 * rng.standard_normal((n, 5))).astype(np.float32)
            f["lab_" + split] = labels.astype(np.int64)


def test_toy_method_trains_scores_and_reports_from_its_own_folder(tmp_path):
    config = tmp_path / "stages.yaml"
    shutil.copy(HERE / "stages.yaml", config)
    features(tmp_path / "data" / "features.h5")

    out = pipeline("run", "train", "--config", str(config)).stdout
    assert "nearest-class accuracy audio->visual" in out

    [run_dir] = (tmp_path / "cache" / "runs" / "toy").glob("toy-*")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["task"] == "held-out-half" and m["n_test"] == 15  # every other one of 30 clips
    with np.load(run_dir / "test_embeddings.npz") as z:  # the metric, brute force from the saved embeddings
        a, v, y = z["audio"].astype(np.float64), z["visual"].astype(np.float64), z["labels"]
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
    assert abs(m["audio2visual"] - np.mean([y[np.argmax(row)] == y[i] for i, row in enumerate(cos)])) < 1e-6
    assert m["audio2visual"] > m["chance"] + 0.3  # the ridge map carries the class structure across
    assert (run_dir / "nn_accuracy.png").stat().st_size > 0

    report = pipeline("report", "--config", str(config), "--out", str(tmp_path / "report.html")).stdout
    assert f"toy / toy: nearest-class accuracy audio->visual {m['audio2visual']:.3f}" in report
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Toy: nearest-class accuracy</h2>" in page and f"{m['visual2audio']:.3f}" in page

    again = pipeline("run", "train", "--config", str(config)).stdout
    assert "run reused" in again


def test_a_stages_yaml_without_the_plugin_leaves_its_runs_out_of_the_report(tmp_path):
    config = tmp_path / "stages.yaml"
    shutil.copy(HERE / "stages.yaml", config)
    features(tmp_path / "data" / "features.h5")
    pipeline("run", "train", "--config", str(config))
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"cache: {tmp_path / 'cache'}\ndatasets: {{}}\nstages: {{}}\n")
    proc = pipeline("report", "--config", str(plain))
    assert "toy" not in proc.stdout and "add its module under `plugins:`" in proc.stderr
