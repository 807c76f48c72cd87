"""VASE stages end to end on a tiny generated spoken-caption corpus: run directory, Recall@K, embeddings,
epoch checkpoints and resume, stage 2 from stage 1, the evaluate table, and stages that do not apply."""
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import open_store
from pipeline.config import load_config
from pipeline.datasets.spoken_shapes import SpokenShapesConfig, SpokenShapesDataset
from pipeline.runner import PipelineError, RunEvents, run

from ..conftest import SHAPES, TINY, cli, write_config

SMALL = {"width": 0.0625, "embed_size": 16, "max_frames": 64, "batch_size": 4, "epochs": 2, "lr": 1e-3,
         "min_word_count": 1}
STAGES = {
    "audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000}},
    "logmel-davenet": {"group": "extract", "implementation": "logmel", "upstream": ["audio"],
                       "params": {"preset": "davenet"}},
    "vgg16": {"group": "extract", "implementation": "vgg16", "params": {"weights": "random:0", "fps": 1.0}},
    "vase-2s": {"group": "train", "implementation": "vase", "upstream": ["logmel-davenet", "vgg16"],
                "params": {**SMALL, "streams": 2}},
    "vase-3s": {"group": "train", "implementation": "vase", "upstream": ["logmel-davenet", "vgg16"],
                "params": {**SMALL, "streams": 3}},
    "vase-3s-finetune": {"group": "train", "implementation": "vase",
                         "upstream": ["logmel-davenet", "vgg16", "vase-3s"],
                         "params": {**SMALL, "streams": 3, "lr": 1e-4, "epochs": 1}},
    "evaluate-speech": {"group": "evaluate", "implementation": "recall",
                        "upstream": ["vase-2s", "vase-3s", "vase-3s-finetune"], "params": {"ks": [1, 5, 10]}},
}


@pytest.fixture
def project(tmp_path: Path, shapes_root: Path) -> Path:
    return write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                        {"shapes": {"adapter": "spoken_shapes", "root": str(shapes_root), "params": SHAPES}}, STAGES)


def test_spoken_shapes_are_real_speech_grouped_by_image(shapes_root):
    m = SpokenShapesDataset("shapes", shapes_root, SpokenShapesConfig(**SHAPES)).manifest()
    assert len(m) == 16 and len({c.group for c in m.clips}) == 8
    assert {c.split for c in m.clips} == {"train", "val", "test"}
    assert sum(c.split == "test" for c in m.clips) == 4
    c = m.clips[0]
    shape = next(s for s in ("circle", "square", "triangle", "cross") if s in c.text[0])
    assert shape in m.clips[1].text[0] and m.clips[1].group == c.group  # both captions name the same picture
    with wave.open(str(c.media["audio"])) as w:
        seconds = w.getnframes() / w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert 0.8 < seconds < 8 and np.abs(samples).max() > 1000  # audible speech, not silence
    assert c.media["image"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(Exception, match="generated with"):
        SpokenShapesDataset("shapes", shapes_root, SpokenShapesConfig(**{**SHAPES, "seed": 5})).prepare()


def test_vase_stage_writes_a_complete_run(project):
    (rep,) = [r for r in run("train", stage="vase-2s", config=project) if getattr(r, "kind", "") == "train"]
    d = rep.run_dir
    for f in ("params.yaml", "checkpoint.pt", "model_best.pt", "model.pt", "history.json", "training_curve.png",
              "test_embeddings.npz", "metrics.json"):
        assert (d / f).exists(), f
    m = json.loads((d / "metrics.json").read_text())
    assert m["task"] == "pairs" and m["evaluated_on"] == "test" and m["n_images"] == 2 and m["n_captions"] == 4
    for direction in ("image2speech", "speech2image"):
        assert set(m[direction]) == {"r@1", "r@5", "r@10", "medr", "meanr"}
    assert m["rsum"] == pytest.approx(sum(m[d][f"r@{k}"] for d in ("image2speech", "speech2image") for k in (1, 5, 10)))
    hist = json.loads((d / "history.json").read_text())
    assert len(hist["loss"]) == 2 and len(hist["val_rsum"]) == 2
    assert m["best_epoch"] == int(np.argmax(hist["val_rsum"])) + 1
    audio = open_store(d / "embeddings" / "speech")
    visual = open_store(d / "embeddings" / "image")
    assert len(audio) == 16 and audio["img0000_0"].shape == (1, 16)
    # both captions of one image share its image embedding
    assert np.array_equal(visual["img0000_0"], visual["img0000_1"])
    with np.load(d / "test_embeddings.npz") as z:
        from models.common.metrics import caption_recall

        again = caption_recall({k: z[k] for k in ("image", "speech")}, z["image_of"])
    assert again["rsum"] == m["rsum"]
    state = torch.load(d / "model.pt", weights_only=True)
    assert state["best_epoch"] + 1 == m["best_epoch"]
    # rerun: reused, nothing trained
    (again_rep,) = [r for r in run("train", stage="vase-2s", config=project) if getattr(r, "kind", "") == "train"]
    assert again_rep.reused and again_rep.run_dir == d


def test_interrupted_training_resumes_after_the_last_epoch(project, monkeypatch):
    from models.vase.trainer import VASETrainer

    cfg = load_config(project, ["vase-2s.epochs=3"])
    real = VASETrainer.evaluate
    calls = {"n": 0}

    def dies_in_epoch_two(self, data, folds=1):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, data, folds)

    monkeypatch.setattr(VASETrainer, "evaluate", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run("train", stage="vase-2s", config=cfg)
    monkeypatch.setattr(VASETrainer, "evaluate", real)
    run_dirs = list((cfg.cache / "runs" / "shapes").glob("vase-2s-*"))
    assert len(run_dirs) == 1 and not (run_dirs[0] / "metrics.json").exists()
    ckpt = torch.load(run_dirs[0] / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 0  # epoch 1 committed, epoch 2 lost
    reports = run("train", stage="vase-2s", config=cfg)
    m = reports[-1].metrics
    assert m["resumed_at_epoch"] == 1 and len(json.loads((run_dirs[0] / "history.json").read_text())["loss"]) == 3


def test_finetune_starts_from_stage_one_and_evaluate_tabulates(project):
    out = cli("run", "evaluate", "--config", str(project), "--no-progress").stdout
    assert "evaluate-speech: evaluated" in out
    for name in ("vase-2s", "vase-3s", "vase-3s-finetune"):
        assert name in out
    assert "R@1" in out and "rsum" in out and "recall_curve.png" in out
    runs = {p.name.rsplit("-", 1)[0]: p for p in (Path(project).parent / "cache" / "runs" / "shapes").iterdir()}
    params = (runs["vase-3s-finetune"] / "params.yaml").read_text()
    assert "init_from" in params and runs["vase-3s"].name in params
    m = json.loads((runs["evaluate-speech"] / "metrics.json").read_text())
    assert set(m["runs"]) == {"vase-2s", "vase-3s", "vase-3s-finetune"}
    assert "image2text" in m["runs"]["vase-3s"] and "image2text" not in m["runs"]["vase-2s"]
    assert (runs["evaluate-speech"] / "recall_curve.png").stat().st_size > 1000
    page = Path(project).parent / "report.html"
    rep = cli("report", "--config", str(project), "--out", str(page)).stdout
    assert "shapes: Recall@K on test [random-weight features]" in rep and "vase-3s-finetune" in rep
    html = page.read_text()
    assert "Paired items: Recall@K" in html and html.count("<img") == 1 and html.count("<summary>params</summary>") == 3
    # stage 1's key is part of stage 2's: a new stage-1 margin means a new stage-2 run
    cfg = load_config(project, ["vase-3s.margin=0.3"])
    from pipeline.runner import resolve
    from pipeline.training import resolve_runs

    ctx = resolve(cfg, "shapes", only=["vase-3s-finetune"])
    assert resolve_runs(ctx, ["vase-3s", "vase-3s-finetune"])["vase-3s-finetune"].run_dir != runs["vase-3s-finetune"]


def test_stages_that_do_not_apply_are_skipped_or_refused(tmp_path, shapes_root, tiny_synthetic_root):
    stages = {**STAGES, "cca": {"group": "train", "implementation": "cca", "upstream": ["audio", "vgg16"],
                                "params": {"n_components": 1}},
              "evaluate": {"group": "evaluate", "implementation": "retrieval", "upstream": ["cca"],
                           "params": {"ks": [1]}}}
    project = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                           {"shapes": {"adapter": "spoken_shapes", "root": str(shapes_root), "params": SHAPES},
                            "tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY}},
                           stages)
    with pytest.raises(PipelineError, match="does not apply.*class labels"):
        run("train", stage="cca", dataset="shapes", config=project)
    with pytest.raises(PipelineError, match="does not apply.*paired with images"):
        run("train", stage="vase-2s", dataset="tiny", config=project)
    skipped = []
    events = RunEvents()
    events.skip = lambda n, why: skipped.append(n)
    reports = run("train", dataset="tiny", config=project, events=events)
    assert set(skipped) == {"vase-2s", "vase-3s", "vase-3s-finetune"}
    assert [r.name for r in reports if getattr(r, "kind", "") == "train"] == ["cca"]
    out = cli("run", "train", "--dataset", "tiny", "--config", str(project), "--no-progress").stdout
    skipped_line = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(skipped_line) == 1 and out.rstrip().splitlines()[-2] == skipped_line[0]  # once, after the work
    assert "vase-2s, vase-3s, vase-3s-finetune (it trains on captions" in skipped_line[0]
    from pipeline.runner import status

    states = {r["stage"]: r["state"] for r in status(load_config(project), "tiny")}
    assert "vase-2s" not in states and states["cca"] == "up to date"  # status shows what applies; --all the rest
    states = {r["stage"]: r["state"] for r in status(load_config(project), "tiny", everything=True)}
    assert states["vase-2s"].startswith("left out: does not apply: it trains on captions") and states["cca"] == "up to date"
    assert states["vase-3s-finetune"].startswith("left out: does not apply")
    # on the caption corpus the MAP evaluate stage does not apply either (its only train stage does not)
    states = {r["stage"]: r["state"] for r in status(load_config(project), "shapes", everything=True)}
    assert states["evaluate"] == "left out: does not apply: every train stage it reads does not apply"
    assert states["cca"].startswith("left out: does not apply: it trains on class-labelled clips")
    # the VASE-only log-mel stage was not computed for a dataset no VASE stage runs on
    assert not list((tmp_path / "cache" / "stores").glob("logmel-davenet-*"))


def test_finetune_cnn_trains_vgg16_end_to_end_on_the_raw_pictures(project):
    cfg = load_config(project, ["vgg16.crop_size=32", "vase-3s-finetune.finetune_cnn=true"])
    (rep,) = [r for r in run("train", stage="vase-3s-finetune", config=cfg) if r.name == "vase-3s-finetune"]
    params = (rep.run_dir / "params.yaml").read_text()
    assert "finetune_cnn:" in params and "crop_size: 32" in params and "random resized crop" in params
    state = torch.load(rep.run_dir / "model.pt", weights_only=True)
    cnn_keys = sorted(k for k in state["model"] if k.startswith("image.cnn."))
    assert cnn_keys, "the fine-tuned VGG16 is part of the saved model"

    from models.vase.trainer import VASETrainer
    from pipeline.registry import TASKS
    from pipeline.runner import resolve
    from pipeline.training import load_trainer, resolve_runs, trainer_for
    from pipeline.training.views import read_items

    ctx = resolve(cfg, "shapes", only=["vase-3s-finetune"])
    rk = resolve_runs(ctx, ["vase-3s", "vase-3s-finetune"])["vase-3s-finetune"]
    assert rk.run_dir == rep.run_dir
    tr = trainer_for(ctx, rk)
    assert (tr._picture_reader.resize_size, tr.cnn.crop_size, tr.cnn.dim) == (37, 32, 4096)  # VGG16's 256:224, at 32
    fresh = tr.cnn.build().eval()  # the vgg16 stage's random:0 network
    assert any(not torch.equal(state["model"][k], fresh.state_dict()[k.removeprefix("image.cnn.")]) for k in cnn_keys)
    # the pictures reach the CNN decoded, resized and cropped as the vgg16 stage did: same fc7 as its store
    pairs = TASKS.get("pairs")()
    items, _ = read_items(ctx, rk, tr, pairs)
    (unit,) = pairs.plan(items, rk.params)[1]
    train = VASETrainer.captions(items.subset(unit.train))
    with torch.no_grad():
        fc7 = fresh(tr._pictures(train, np.arange(3), train=False)).numpy()
    assert np.allclose(fc7, train.images[:3], rtol=1e-4, atol=1e-5)
    # the saved run loads back, fine-tuned VGG16 included, and embeds the test split as the run did
    back = load_trainer(rep.run_dir).embed(items.subset(unit.test))
    with np.load(rep.run_dir / "test_embeddings.npz") as z:
        assert np.allclose(back["image"], z["image"], atol=1e-5) and np.allclose(back["speech"], z["speech"], atol=1e-5)


def test_each_picture_is_decoded_and_embedded_once_per_store(project, monkeypatch):
    from extractors._frames import FrameExtractor

    calls: list[str] = []
    real = FrameExtractor.decode_resized

    def counting(self, clip, resize_size=None):
        calls.append(clip.clip_id)
        return real(self, clip, resize_size)

    monkeypatch.setattr(FrameExtractor, "decode_resized", counting)
    (rep,) = run("extract", stage="vgg16", config=project, overrides=["vgg16.crop_size=32"], shard_size=3)
    assert rep.computed == 16 and rep.shared == 8 and len(calls) == 8  # 8 pictures, 16 captions
    store = open_store(rep.store_path, dataset="shapes", config=project)
    for i in range(8):
        np.testing.assert_array_equal(store[f"img{i:04d}_0"], store[f"img{i:04d}_1"])
