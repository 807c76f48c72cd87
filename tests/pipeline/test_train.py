"""Train and evaluate stages: run directories, CV folds, resume, reuse of cached features, report."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from models.common.metrics import mean_average_precision
from pipeline import open_store
from pipeline.config import load_config
from pipeline.runner import PipelineError, run, status
from pipeline.training import RunReport

from ..conftest import cli, write_config
from .test_tnn import IMPORT_STAGES, make_tnn_h5, make_tnn_npy

UP = ["audio_features", "visual_features"]
TRAIN_STAGES = {
    **IMPORT_STAGES,
    "cca": {"group": "train", "implementation": "cca", "upstream": UP, "params": {"n_components": 4, "reg": 1e-3}},
    "cluster-cca": {"group": "train", "implementation": "cluster_cca", "upstream": UP,
                    "params": {"n_components": 4, "beta": 0.2, "reg": 1e-3}},
    "tnn-ccca": {"group": "train", "implementation": "tnn_ccca", "upstream": UP,
                 "params": {"epochs": 12, "triplet_batch": 32, "n_components": 4}},
    "evaluate": {"group": "evaluate", "implementation": "retrieval", "upstream": ["cca", "cluster-cca", "tnn-ccca"],
                 "params": {"ks": [1, 5]}},
}


def planted(n: int, rng: np.random.Generator, classes: int = 4) -> dict[str, np.ndarray]:
    """Clip-level features whose class shows in both views (8 audio dims, 12 visual dims)."""
    centres = np.random.default_rng(99).normal(size=(classes, 20)) * 1.5
    labels = rng.integers(0, classes, n)
    return {"audio": (centres[labels, :8] + rng.normal(size=(n, 8))).astype(np.float32),
            "visual": (centres[labels, 8:] + rng.normal(size=(n, 12))).astype(np.float32),
            "lab": labels.astype(np.int64)}


@pytest.fixture
def features_project(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    tr, te = planted(96, rng), planted(48, rng)
    make_tnn_h5(tmp_path / "feats" / "vegas_feature.h5", **{f"{k}_train": v for k, v in tr.items()},
                **{f"{k}_test": v for k, v in te.items()})
    return write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                        {"feats": {"adapter": "tnn_h5", "root": str(tmp_path / "feats")}}, TRAIN_STAGES,
                        default_dataset="feats")


def test_evaluate_trains_every_method_and_writes_run_directories(features_project):
    reports = run("evaluate", config=features_project)
    runs = {r.name: r for r in reports if isinstance(r, RunReport)}
    assert set(runs) == {"cca", "cluster-cca", "tnn-ccca", "evaluate"}
    for name in ("cca", "cluster-cca", "tnn-ccca"):
        d = runs[name].run_dir
        assert d.parent.name == "feats" and d.name.startswith(f"{name}-")
        info = yaml.safe_load((d / "params.yaml").read_text())
        assert info["implementation"] == TRAIN_STAGES[name]["implementation"] and info["protocol"] == "split"
        assert (d / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        m = json.loads((d / "metrics.json").read_text())
        assert list(m["folds"]) == ["split"]
        with np.load(d / "folds" / "split" / "embeddings.npz") as z:  # the reported MAP is these embeddings'
            assert len(z["clip_ids"]) == 48 and all(c.startswith("test/") for c in z["clip_ids"])
            sim = (z["audio"] / np.linalg.norm(z["audio"], axis=1, keepdims=True)) @ \
                  (z["visual"] / np.linalg.norm(z["visual"], axis=1, keepdims=True)).T
            assert m["map_audio2visual"]["mean"] == pytest.approx(
                mean_average_precision(sim, z["labels"], z["labels"]), abs=1e-6)
        for view in ("audio", "visual"):  # every clip's embedding, from the final model
            st = open_store(d / "embeddings" / view)
            assert len(st) == 144 and st[st.clip_ids[-1]].shape == (1, 4) and st.attrs["modality"] == view
    for name in ("cluster-cca", "tnn-ccca"):  # the classes are learnable: far above chance
        m = runs[name].metrics
        assert m["map_audio2visual"]["mean"] > m["chance_map"]["mean"] + 0.3
        assert m["map_visual2audio"]["mean"] > m["chance_map"]["mean"] + 0.3
    table = runs["evaluate"].metrics["runs"]
    assert set(table) == {"cca", "cluster-cca", "tnn-ccca"} and "p@5_audio2visual" in table["cca"]
    assert table["cca"]["map_audio2visual"]["mean"] == pytest.approx(runs["cca"].metrics["map_audio2visual"]["mean"])
    again = {r.name: r for r in run("evaluate", config=features_project) if isinstance(r, RunReport)}
    assert all(r.reused for r in again.values())  # nothing retrains


def test_changing_the_margin_trains_anew_on_the_cached_features(features_project):
    first = run("train", stage="tnn-ccca", config=features_project)
    assert sum(r.computed for r in first if not isinstance(r, RunReport)) == 2 * 144
    old = first[-1].run_dir
    second = run("train", stage="tnn-ccca", config=features_project, overrides=["tnn-ccca.margin=0.5"])
    imports = [r for r in second if not isinstance(r, RunReport)]
    assert [r.computed for r in imports] == [0, 0] and [r.reused for r in imports] == [144, 144]
    new = second[-1]
    assert not new.reused and new.run_dir != old and new.units_trained == 1
    assert yaml.safe_load((new.run_dir / "params.yaml").read_text())["params"]["margin"] == 0.5
    assert (old / "metrics.json").exists()  # the first run is still there


def folds_project(tmp_path: Path, n: int = 30) -> Path:
    root = tmp_path / "npy"
    make_tnn_npy(root, n=n, n_folds=5)
    rng = np.random.default_rng(1)
    centres = rng.integers(40, 216, (3, 128 + 1024))
    for vid in sorted(p.stem for p in (root / "vgg").glob("*.npy")):
        label = int(np.load(root / "VEGAS_classes" / f"{vid}.npy"))
        x = np.clip(centres[label] + rng.normal(0, 30, (4, 128 + 1024)), 0, 255).astype(np.uint8)
        np.save(root / "vgg" / f"{vid}.npy", x[:, :128])
        np.save(root / "inception" / f"{vid}.npy", x[:, 128:])
    return write_config(tmp_path / "stages.yaml", tmp_path / "cache", {"npy": {"adapter": "tnn_npy", "root": str(root)}},
                        TRAIN_STAGES, default_dataset="npy")


def test_cross_validation_resumes_after_an_interrupted_fold(tmp_path, monkeypatch):
    from models.tnn_ccca.cluster_cca import ClusterCCATrainer

    cfg = folds_project(tmp_path)
    real, calls = ClusterCCATrainer.fit, []

    def flaky(self, *a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during the third fold
        return real(self, *a)

    monkeypatch.setattr(ClusterCCATrainer, "fit", flaky)
    with pytest.raises(KeyboardInterrupt):
        run("train", stage="cluster-cca", config=cfg)
    run_dir = next((tmp_path / "cache" / "runs" / "npy").glob("cluster-cca-*"))
    assert sorted(p.name for p in (run_dir / "folds").iterdir() if not p.name.startswith(".")) == ["fold-0", "fold-1"]
    assert not (run_dir / "metrics.json").exists()
    states = lambda: {r["stage"]: r["state"] for r in status(load_config(cfg), None)}  # noqa: E731
    assert states()["cluster-cca"] == "partial: 2 fold(s) committed" and states()["cca"] == "missing"
    monkeypatch.setattr(ClusterCCATrainer, "fit", real)
    rep = run("train", stage="cluster-cca", config=cfg)[-1]
    assert states()["cluster-cca"] == "up to date"
    assert (rep.units_reused, rep.units_trained) == (2, 3) and rep.metrics["protocol"] == "folds"
    assert list(rep.metrics["folds"]) == [f"fold-{k}" for k in range(5)]
    m = rep.metrics["map_audio2visual"]
    fold3 = json.loads((run_dir / "folds" / "fold-3" / "metrics.json").read_text())  # per-fold metrics
    assert fold3["map_audio2visual"] == m["values"][3] and fold3["n"] == 6
    assert len(m["values"]) == 5 and m["mean"] == pytest.approx(np.mean(m["values"]))
    assert m["std"] == pytest.approx(np.std(m["values"])) and m["mean"] > rep.metrics["chance_map"]["mean"] + 0.3
    # each clip is held out exactly once
    ids = []
    for k in range(5):
        with np.load(run_dir / "folds" / f"fold-{k}" / "embeddings.npz") as z:
            ids += list(z["clip_ids"])
    assert len(ids) == len(set(ids)) == 30


def test_train_stage_errors_say_what_to_do(features_project, tmp_path):
    stages = {**TRAINING_ONLY_AUDIO}
    cfg = write_config(tmp_path / "s2.yaml", tmp_path / "cache",
                       {"feats": {"adapter": "tnn_h5", "root": str(tmp_path / "feats")}}, stages)
    with pytest.raises(PipelineError, match="no visual upstream stage that applies to dataset 'feats'"):
        run("train", dataset="feats", config=cfg)
    with pytest.raises(PipelineError, match="protocol 'folds' needs every clip in one of >= 2 folds"):
        run("train", stage="cca", config=features_project, overrides=["cca.protocol=folds"])


TRAINING_ONLY_AUDIO = {"audio_features": IMPORT_STAGES["audio_features"],
                       "cca": {"group": "train", "implementation": "cca", "upstream": ["audio_features"]}}


def test_report_lists_runs_in_a_table_and_a_page(features_project, tmp_path):
    p = cli("run", "train", "--stage", "cca", "--config", str(features_project), "--no-progress")
    assert "cca: trained 1 fold(s)" in p.stdout and "MAP audio->visual" in p.stdout and "(chance 0." in p.stdout
    run("train", stage="cca", config=features_project, overrides=["cca.reg=0.5"])
    p = cli("report", "--config", str(features_project), "--out", str(tmp_path / "r.html"))
    lines = [line for line in p.stdout.splitlines() if line.startswith("feats")]
    assert len(lines) == 2 and all(" cca " in line for line in lines)
    assert any("reg=0.5" in line for line in lines) and any("reg=0.001" in line for line in lines)
    page = (tmp_path / "r.html").read_text()
    assert page.count("<tr><td>feats</td>") == 2 and page.count("<details><summary>params</summary>") == 2
    assert page.count("data:image/png;base64,") == 1  # one chart per dataset, every run overlaid
    _serve_searches_labelled_clips_by_item(features_project)


def _serve_searches_labelled_clips_by_item(config: Path) -> None:
    """`pipeline serve` on runs of labelled clips: the run list shows the report's section, each run is searchable
    from an item of one view to the other, and the results of its class are marked right."""
    import re
    import urllib.parse

    from fastapi.testclient import TestClient

    from pipeline.config import load_config
    from pipeline.serve import create_app

    client = TestClient(create_app(load_config(config)))
    page = client.get("/runs").text
    runs = re.findall(r'href="(/runs/feats/cca-[0-9a-f]+)"', page)
    assert len(runs) == 2 and "Labelled clips: cross-modal MAP" in page
    run_page = client.get(runs[0]).text
    item = urllib.parse.unquote(re.search(r'search\?item=([^&]+)&amp;source=audio', run_page).group(1))
    r = client.get(f"{runs[0]}/search", params={"item": item, "source": "audio", "to": "visual", "scope": "test", "k": 5})
    assert r.status_code == 200 and r.text.count('<tr class="result') == 5
    assert re.search(r"The right one is at rank \d+", r.text) and "&#10003; right" in r.text


def test_a_clip_too_short_for_vggish_fails_by_name_and_training_goes_on(tmp_path, clip_factory):
    root = tmp_path / "v"
    for cls, f in [("dog", 300), ("drum", 1200)]:
        for i in range(3):
            clip_factory(root / cls / f"{cls}{i}.mp4", seconds=1.5, freq=f + 20 * i)
    clip_factory(root / "dog" / "blip.mp4", seconds=0.05, freq=500)
    stages = {
        "audio": {"group": "extract", "implementation": "audio"},
        "vggish": {"group": "extract", "implementation": "vggish", "upstream": ["audio"],
                   "params": {"weights": "random:0"}},
        "vgg16": {"group": "extract", "implementation": "vgg16", "params": {"weights": "random:0", "crop_size": 32}},
        "cca": {"group": "train", "implementation": "cca", "upstream": ["vggish", "vgg16"],
                "params": {"n_components": 2, "reg": 1e-2}},
    }
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"v": {"adapter": "folder", "root": str(root), "params": {"n_folds": 2}}}, stages)
    reports = run("train", config=cfg, stage="cca")
    by_name = {r.name: r for r in reports}
    assert by_name["audio"].failed == 0  # the clip decodes: it is only too short for VGGish
    [failure] = by_name["vggish"].failures
    assert failure["id"] == "dog/blip"
    assert failure["reason"].startswith("too short: 0.0") and "vggish needs at least 0.975 s" in failure["reason"]
    assert "dog/blip" not in open_store(dataset="v", stage="vggish", config=cfg)
    info = yaml.safe_load((by_name["cca"].run_dir / "params.yaml").read_text())
    assert info["clips"] == 6 and info["left_out"] == 1 and by_name["cca"].metrics["folds"]

    padded = run("extract", config=cfg, stage="vggish", overrides=["vggish.pad_short=true"])[-1]
    assert padded.failed == 0 and padded.computed == 7 and padded.store_path != by_name["vggish"].store_path
    assert open_store(padded.store_path, dataset="v", config=cfg)["dog/blip"].shape == (1, 128)


def test_gc_removes_runs_no_current_key_references(features_project, tmp_path):
    kept = run("train", stage="cca", config=features_project)[-1].run_dir
    old = run("train", stage="cca", config=features_project, overrides=["cca.reg=0.01"])[-1].run_dir
    dry = cli("gc", "--dry-run", "--config", str(features_project)).stdout
    assert f"would remove {old}" in dry and str(kept) not in dry and old.exists()
    out = cli("gc", "--config", str(features_project)).stdout
    assert "removed 0 store(s) and 1 run(s)" in out and not old.exists() and kept.exists()
    assert run("train", stage="cca", config=features_project)[-1].reused


def test_ctrl_c_during_training_says_which_folds_it_kept(features_project, tmp_path):
    """Ctrl-C while tnn-ccca trains (after its split unit is committed): the message names the units committed, as
    on disk, and the rerun reuses them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run("import", config=features_project)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "train", "--stage", "tnn-ccca", "--config",
                             str(features_project), "--set", "tnn-ccca.epochs=400", "--no-progress"],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def committed() -> list:  # units renamed into place (a unit being written is a hidden .tmp- folder)
        return [p for p in (tmp_path / "cache" / "runs").glob("feats/tnn-ccca-*/folds/*/embeddings.npz")
                if not p.parent.name.startswith(".")]

    t0 = time.time()
    while not committed():
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    folds = committed()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert f"and tnn-ccca partial: {len(folds)} fold(s) committed, rerun to resume" in err, err
    rep = run("train", stage="tnn-ccca", config=features_project, overrides=["tnn-ccca.epochs=400"])[-1]
    assert rep.units_reused == len(folds) >= 1 and rep.units_trained == 0  # the one split unit was kept
