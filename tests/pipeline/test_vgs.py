"""VGS end to end: the generated scenes in SPEECH-COCO / SpokenCOCO / COCO-instances layouts, the spokencoco
adapter, and a short CPU training whose attention lands on the named shapes more than the random baseline."""
from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline import open_store
from pipeline.datasets import DatasetError
from pipeline.datasets.spoken_scenes import SpokenScenesConfig, SpokenScenesDataset
from pipeline.datasets.spokencoco import SpokenCocoConfig, SpokenCocoDataset
from pipeline.runner import PipelineError, run

from ..conftest import write_config

SCENES = {"n_train": 60, "n_val": 40, "captions_per_image": 3, "palette": "per_shape", "seed": 1}
# a short run: no dropout, and batch norm's running statistics averaged fast enough for evaluation after 108 batches
VGS = {"model": "cnnatt", "width": 0.125, "lr": 3.0e-3, "batch_size": 20, "epochs": 12, "dropout": 0.0, "bn_momentum": 0.3}
STAGES = {
    "audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000}},
    "logmel-vgs": {"group": "extract", "implementation": "logmel", "upstream": ["audio"], "params": {"preset": "vgs"}},
    "vgg16-maps": {"group": "extract", "implementation": "vgg16",
                   "params": {"weights": "random:0", "fps": 1.0, "layer": "block5_conv3", "resize": "whole",
                              "crop_size": 112}},  # 7 x 7 maps: a quarter of the reference's 224 px cost
    "vgs": {"group": "train", "implementation": "vgs", "upstream": ["logmel-vgs", "vgg16-maps"], "params": VGS},
    "vgs-alignment": {"group": "evaluate", "implementation": "alignment", "upstream": ["vgs"],
                      "params": {"pictures": 2}},
}


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "scenes"
    SpokenScenesDataset("scenes", root, SpokenScenesConfig(**SCENES)).prepare()
    return root


def test_generated_scenes_are_read_by_the_real_adapters(scenes_root):
    m = SpokenScenesDataset("scenes", scenes_root, SpokenScenesConfig(**SCENES)).manifest()
    assert len(m) == 3 * (SCENES["n_train"] + SCENES["n_val"]) and {c.split for c in m.clips} == {"train", "val"}
    assert set(m.annotations) == {"train", "val"}
    c = m.clips[0]
    assert c.words and [w for w, _, _ in c.words] == c.text[0].split()
    with wave.open(str(c.media["audio"])) as w:
        rate = w.getframerate()
        x = np.abs(np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.int32))
    first = int(c.words[0][1] * rate)
    assert x[:first - 200].max() < 300 < x[first:first + 2000].max()  # silence, then the first word at its onset
    sc = SpokenScenesDataset("scenes-sc", scenes_root, SpokenScenesConfig(**{**SCENES, "layout": "spokencoco"})).manifest()
    assert len(sc) == len(m) and not any(x.words for x in sc.clips)
    assert {x.media["audio"] for x in sc.clips} == {x.media["audio"] for x in m.clips}
    assert {x.group for x in sc.clips} == {x.group for x in m.clips}  # COCO image ids from the file names
    # a named shape's mask covers pixels of that shape's colour
    from PIL import Image

    from models.vgs.alignment import CocoMasks

    coco = CocoMasks(m.annotations["train"])
    img = np.asarray(Image.open(c.media["image"]).convert("RGB")).astype(int)
    for cat in coco.image_categories(int(c.group)):
        mask = coco.mask(int(c.group), cat, img.shape[:2]) > 0
        inside, outside = img[mask].mean(0), img[~mask].mean(0)
        assert np.abs(inside - outside).sum() > 60, cat


def _spokencoco(root: Path, entries: list, split: str = "val") -> None:
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    (root / "images" / "val2014").mkdir(parents=True, exist_ok=True)
    for e in entries:
        (root / "images" / e["image"]).write_bytes(b"x")
        for c in e["captions"]:
            if ".." not in c["wav"]:
                (root / c["wav"]).write_bytes(b"RIFF")
    (root / f"SpokenCOCO_{split}.json").write_text(json.dumps({"data": entries}))


def test_spokencoco_layout_and_its_errors(tmp_path):
    root = tmp_path / "sc"
    _spokencoco(root, [{"image": "val2014/COCO_val2014_000000000042.jpg",
                        "captions": [{"wav": "wavs/a.wav", "text": "a dog", "uttid": "u1"},
                                     {"wav": "wavs/b.wav", "text": "a cat", "uttid": "u2"}]}])
    m = SpokenCocoDataset("sc", root, SpokenCocoConfig()).manifest()
    assert [(c.clip_id, c.group, c.split, c.text) for c in m.clips] == [("val/u1", "42", "val", ("a dog",)),
                                                                         ("val/u2", "42", "val", ("a cat",))]
    assert m.annotations == {}
    with pytest.raises(DatasetError, match="expected layout"):
        SpokenCocoDataset("sc", tmp_path / "nothing", SpokenCocoConfig()).manifest()
    with pytest.raises(DatasetError, match=r"SpokenCOCO_train.json"):
        SpokenCocoDataset("sc", root, SpokenCocoConfig(splits=["train"])).manifest()
    (root / "SpokenCOCO_val.json").write_text(json.dumps({"data": [{"image": "x.jpg"}]}))
    with pytest.raises(DatasetError, match="captions"):
        SpokenCocoDataset("sc", root, SpokenCocoConfig()).manifest()
    _spokencoco(root, [{"image": "val2014/COCO_val2014_000000000042.jpg",
                        "captions": [{"wav": "../../etc/passwd", "text": "x"}]}])
    with pytest.raises(DatasetError, match="escapes"):
        SpokenCocoDataset("sc", root, SpokenCocoConfig()).manifest()


def test_vgs_alignment_on_generated_scenes(tmp_path, scenes_root, monkeypatch):
    """A short CPU training: it retrieves far above chance, its attention on the named shape beats the random tensor,
    and everything is written."""
    import models.vgs.alignment as alignment
    from models.vgs.task import scored_before

    scorings = []
    score = alignment.score_utterances
    monkeypatch.setattr(alignment, "score_utterances", lambda *a, **k: scorings.append(1) or score(*a, **k))
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"scenes": {"adapter": "spoken_scenes", "root": str(scenes_root), "params": SCENES}}, STAGES,
                       execution={"workers": 1, "shard_size": 32, "progress": False})  # 300 utterances: few shards
    reports = run("evaluate", config=cfg, stage="vgs-alignment")
    train = next(r for r in reports if getattr(r, "name", "") == "vgs")
    d = train.run_dir
    m = json.loads((d / "metrics.json").read_text())
    assert m["task"] == "localization" and m["evaluated_on"] == "val"
    al = m["alignment"]
    o = al["overall"]
    assert al["n_words"] >= 200
    for way in ("speech2image", "image2speech"):  # 40 val images: chance R@10 is 25 %
        assert m[way]["r@10"] >= 1.6 * m["chance"][way]["r@10"], (way, m[way], m["chance"][way])
    assert o["gs_object"] > 1.3 * o["random_gs_object"], o
    assert o["as_object"] > 1.3 * o["random_as_object"], o
    assert 0.8 < o["random_gs_object"] / np.mean([r["random_gs_object"] for r in al["per_category"].values() if r["n"]]) < 1.25
    assert set(m["sampled_r@10"]) == {"speech2image", "image2speech"}
    store = open_store(d / "av_tensors")
    assert len(store) == 120 and store[store.clip_ids[0]].shape == (64, 49)  # 512 / 8 frames x 7 x 7 cells
    for f in ("alignment.png", "confusion.png", "recall_curve.png", "samples/00.png", "alignment_words.json"):
        assert (d / f).exists(), f
    cm = np.array(al["confusion"]["gs_object"])
    assert cm.shape == (5, 4)
    ev = next(r for r in reports if getattr(r, "name", "") == "vgs-alignment")
    assert (ev.run_dir / "confusion.png").exists() and ev.metrics["runs"]["vgs"]["alignment"]["n_words"] == al["n_words"]
    # the evaluate stage, at the scoring defaults, took the run's own scores (the random baseline drawn once)
    # and drew its own pictures (2) into its own run directory
    assert len(scorings) == 1
    assert {k: v for k, v in ev.metrics["runs"]["vgs"]["alignment"].items() if k != "pictures"} == \
        {k: v for k, v in al.items() if k != "pictures"}
    assert sorted(p.name for p in (ev.run_dir / "samples").glob("*.png")) == ["00.png", "01.png"]
    assert scored_before(d, {"seed": 0, "pictures": 3})["summary"]["pictures"] == 3
    for other in ({"softmax": False}, {"seed": 1}, {"random_baseline": False}, {"word_vectors": "w2v.bin"}):
        assert scored_before(d, other) is None, other  # scored anew
    instances = Path(json.loads((d / "localization.json").read_text())["instances"]["val"])
    instances.rename(instances.with_suffix(".moved"))
    try:
        assert scored_before(d, {}) is None  # scoring anew says the annotations moved
    finally:
        instances.with_suffix(".moved").rename(instances)
    assert scored_before(d, {}) is not None
    monkeypatch.setattr(alignment.Alignment, "VERSION", alignment.Alignment.VERSION + 1)
    assert scored_before(d, {}) is None  # scored by older code
    _serve_explains_a_spoken_word(cfg, d)


def _serve_explains_a_spoken_word(cfg: Path, d: Path) -> None:
    """`pipeline serve` draws a word's attention over its image from the run's AV tensor and the word's span: the
    peak on the page is the peak of SA summed over the word's frames, computed here from the store."""
    import re

    from fastapi.testclient import TestClient

    import models.vgs.alignment as al
    from pipeline.config import load_config
    from pipeline.serve import create_app

    client = TestClient(create_app(load_config(cfg)))
    url = f"/runs/scenes/{d.name}"
    page = client.get(url).text
    assert "Explain a spoken word" in page
    it = json.loads((d / "localization.json").read_text())["items"][0]
    sa, _ = al.source_maps(open_store(d / "av_tensors")[it["clip_id"]], None, True)
    spans = al.word_spans([tuple(w) for w in it["words"]], it["n_frames"], len(sa) * al.SCALE_T)
    assert f"word={len(spans) - 1}" in page
    for k in (0, len(spans) - 1):
        _, word, on, off = spans[k]
        heat = np.tensordot(al.frame_weights(len(sa), al.SCALE_T, on, off), sa, axes=1)
        y, x = np.unravel_index(int(heat.argmax()), heat.shape)
        r = client.get(f"{url}/explain", params={"item": it["clip_id"], "word": str(k)})
        assert r.status_code == 200 and f'The spoken word "{word}"' in r.text
        px, py = (float(v) for v in re.search(r"peak at \(([\d.]+), ([\d.]+)\) px", r.text).groups())
        assert (int(px // al.SCALE_HW), int(py // al.SCALE_HW)) == (int(x), int(y)), (k, word, px, py, x, y)
    r = client.get(f"{url}/explain", params={"item": it["clip_id"], "word": "999"})
    assert r.status_code == 400 and "has words 0 to" in r.text
    r = client.get(f"{url}/explain", params={"item": it["clip_id"], "q": "a red circle"})
    assert r.status_code == 400 and "no explain picture for a typed phrase" in r.text


def test_alignment_stage_does_not_apply_without_timed_words(tmp_path, scenes_root):
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"sc": {"adapter": "spoken_scenes", "root": str(scenes_root),
                               "params": {**SCENES, "layout": "spokencoco"}}}, STAGES)
    with pytest.raises(PipelineError, match="scores 'localization' runs"):
        run("evaluate", config=cfg, stage="vgs-alignment")


def test_models_trained_on_one_corpus_are_scored_on_another(tmp_path_factory, tmp_path):
    """The paper's protocol: train on SpokenCOCO (no word timings), score alignment on SPEECH-COCO."""
    tiny = {"n_train": 6, "n_val": 3, "captions_per_image": 1, "seed": 2}
    root = tmp_path_factory.mktemp("data") / "tiny-scenes"
    quick = {**STAGES, "vgs": {**STAGES["vgs"], "params": {**VGS, "epochs": 1, "width": 1 / 16}},
             "vgs-alignment": {**STAGES["vgs-alignment"], "params": {"pictures": 1, "model_dataset": "sc"}}}
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"coco": {"adapter": "spoken_scenes", "root": str(root), "params": tiny},
                        "sc": {"adapter": "spoken_scenes", "root": str(root), "params": {**tiny, "layout": "spokencoco"}}},
                       quick)
    with pytest.raises(PipelineError, match=r"run `pipeline run train --dataset sc --stage vgs` first"):
        run("evaluate", config=cfg, dataset="coco", stage="vgs-alignment")
    (trained,) = [r for r in run("train", config=cfg, dataset="sc", stage="vgs") if getattr(r, "name", "") == "vgs"]
    assert json.loads((trained.run_dir / "metrics.json").read_text())["task"] == "pairs"
    reports = run("evaluate", config=cfg, dataset="coco", stage="vgs-alignment")
    assert [p.name.rsplit("-", 1)[0] for p in (tmp_path / "cache" / "runs" / "coco").iterdir()] == ["vgs-alignment"]
    (ev,) = [r for r in reports if getattr(r, "name", "") == "vgs-alignment"]
    m = ev.metrics["runs"]["vgs"]
    assert m["model_dataset"] == "sc" and m["evaluated_on"] == "val" and m["run"] == str(trained.run_dir)
    assert m["alignment"]["n_words"] > 0 and m["n_images"] == 3
    assert open_store(ev.run_dir / "vgs" / "av_tensors")[f"val2014/{sorted(p.stem for p in (root / 'val2014' / 'json').glob('*.json'))[0]}"].shape == (64, 49)
    assert (ev.run_dir / "confusion.png").exists()
    again = run("evaluate", config=cfg, dataset="coco", stage="vgs-alignment")
    assert [r for r in again if getattr(r, "name", "") == "vgs-alignment"][0].reused
