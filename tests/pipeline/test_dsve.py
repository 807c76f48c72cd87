"""DSVE-loc end to end on the generated scenes: written captions in Karpathy's COCO layout to train on, the same
scenes' shapes as Visual Genome regions (phrase + box) for the pointing game, COCO instances for the semantic
segmentation; a short CPU training whose retrieval beats chance and whose heatmaps beat the centre baseline;
`pipeline embed` on new images and sentences."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import open_store
from pipeline.cli import main
from pipeline.runner import PipelineError, RunEvents, run

from ..conftest import cli, write_config

SCENES = {"n_train": 60, "n_val": 30, "captions_per_image": 3, "palette": "per_shape", "seed": 1, "speech": False}
DSVE = {"word_vectors": "random:0", "word_dim": 64, "map_channels": 256, "embed_size": 128, "sru_layers": 2,
        "n_max": 3, "batch_size": 30, "epochs": 20, "lr": 2.0e-3, "lr_milestones": [], "text_epoch": 1,
        "max_violation": False,  # the hardest negative from scratch stalls on 90 images whose shape sets repeat
        "pointing_nmax": 40}
STAGES = {
    "resnet": {"group": "extract", "implementation": "resnet152",
               "params": {"weights": "random:0", "fps": 1.0, "image_size": 192}},
    "dsve": {"group": "train", "implementation": "dsve", "upstream": ["resnet"], "params": DSVE},
    "resnet-160": {"group": "extract-images", "implementation": "resnet152",
                   "params": {"weights": "random:0", "fps": 1.0, "image_size": 160}},
    # the pointing game reads the VG images at another size than the model trained on (the paper: 416 vs 256)
    "dsve-pointing": {"group": "evaluate", "implementation": "pointing", "upstream": ["dsve", "resnet-160"],
                      "views": {"image": "resnet-160"}, "params": {"model_dataset": "scenes", "point": "corner"}},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    tmp = tmp_path_factory.mktemp("dsve")
    root = tmp / "scenes"
    datasets = {"scenes": {"adapter": "spoken_scenes", "root": str(root), "params": {**SCENES, "layout": "coco_captions"}},
                "scenes-vg": {"adapter": "spoken_scenes", "root": str(root), "params": {**SCENES, "layout": "visual_genome"}}}
    cfg = write_config(tmp / "stages.yaml", tmp / "cache", datasets, STAGES,
                       execution={"workers": 1, "shard_size": 64, "progress": False})
    notices: list[str] = []
    events = RunEvents()
    events.notice = notices.append
    reports = run("train", config=cfg, dataset="scenes", stage="dsve", events=events)
    reports += run("evaluate", config=cfg, dataset="scenes-vg", stage="dsve-pointing", events=events)
    return cfg, reports, notices


def test_dsve_retrieval_and_pointing_beat_chance(trained):
    cfg, reports, notices = trained
    train = next(r for r in reports if getattr(r, "name", "") == "dsve")
    m = json.loads((train.run_dir / "metrics.json").read_text())
    assert m["task"] == "grounding" and m["evaluated_on"] == "val"
    for d in ("image2text", "text2image"):
        assert m[d]["r@10"] > 2 * m["chance"][d]["r@10"], (d, m[d], m["chance"][d])
    # the scenes' COCO instances: the category names' heatmaps scored against the masks
    seg = m["segmentation"]
    assert seg["n_images"] == 30 and 0.0 <= seg["map@0.3"] <= 1.0
    ev = next(r for r in reports if getattr(r, "name", "") == "dsve-pointing")
    pm = ev.metrics["runs"]["dsve"]
    p = pm["pointing"]
    assert pm["model_dataset"] == "scenes" and p["n_images"] == 30 and p["n_phrases"] >= 60
    assert p["accuracy"] > p["centre_baseline"] + 0.1, p
    out = ev.run_dir / "dsve"
    store = open_store(out / "heatmaps")
    assert len(store) == p["n_phrases"] and store[store.clip_ids[0]].shape == (5, 5)  # the 160 maps, not 192's 6 x 6
    for f in ("pointing.png", "samples/00.png"):
        assert (ev.run_dir / f).exists(), f
    # VG's phrases are pointed at, not ranked: no Recall@K, no test embeddings (~860k phrases on the real corpus)
    assert "rsum" not in pm and not (out / "test_embeddings.npz").exists() and (out / "model.pt").exists()
    # only the features the evaluation binds were computed for the VG layout, and each run said what it writes
    vg = reports[next(i for i, r in enumerate(reports) if getattr(r, "name", "") == "dsve") + 1:]  # the VG run's
    computed = {r.name for r in vg if hasattr(r, "store_path")}
    assert computed == {"resnet-160"}, computed
    # one row per picture (90 pictures of 270 captions: 79.6 MB when each caption had its own row)
    assert any("resnet: 90 clips x [6, 6, 2048] float32 = 26.5 MB to write" in n for n in notices), notices


def test_report_shows_the_pointing_game(trained, tmp_path):
    cfg, _, _ = trained
    res = CliRunner().invoke(main, ["report", "--config", str(cfg), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert "pointing game and segmentation" in page and "model trained on scenes" in page
    assert "image &rarr; captions" in page and page.count("data:image/png;base64,") >= 2
    assert re.search(r"scenes-vg: dsve \(dsve-pointing\) \(model trained on scenes .*\): pointing game [\d.]+% "
                     r"\(centre [\d.]+%\) over \d+ phrases", res.output), res.output


def test_embed_new_images_and_sentences(trained, tmp_path):
    cfg, reports, _ = trained
    train = next(r for r in reports if getattr(r, "name", "") == "dsve")
    images = tmp_path / "imgs"
    images.mkdir()
    src = sorted((Path(cfg).parent / "scenes" / "images" / "val2014").glob("*.jpg"))[:3]
    for p in src:
        (images / p.name).write_bytes(p.read_bytes())
    texts = tmp_path / "s.txt"
    texts.write_text("a red circle\nthere is a square next to a cross\n")
    # a fresh process, as a user runs it: nothing imported the extractors before `embed` looks one up
    res = cli("embed", "--run", str(train.run_dir), "--images", str(images), "--out", str(tmp_path / "out"))
    assert "image embeddings:" in res.stdout
    res = cli("embed", "--run", str(train.run_dir), "--texts", str(texts), "--out", str(tmp_path / "out"))
    assert "text embeddings:" in res.stdout
    img, txt = open_store(tmp_path / "out" / "image"), open_store(tmp_path / "out" / "text")
    assert sorted(img.clip_ids) == sorted(p.name for p in src) and txt.clip_ids == ["1", "2"]
    # the same images as the run's test embeddings: the same vectors (the extractor and model are the run's)
    with np.load(train.run_dir / "test_embeddings.npz") as z:
        groups, emb = list(z["groups"]), z["image"]
    for name in img.clip_ids:
        gid = str(int(name.rsplit("_", 1)[-1].split(".")[0]))
        np.testing.assert_allclose(img[name][0], emb[groups.index(gid)], atol=1e-4)
    assert np.allclose(np.linalg.norm(txt["1"][0]), 1, atol=1e-5)


def test_a_missing_word_vectors_file_is_one_clear_error(trained):
    cfg, _, _ = trained
    with pytest.raises(PipelineError, match=r"word vectors '/nonexistent/v.txt'.*does not exist. Accepted: a skip-thoughts"):
        run("train", config=cfg, dataset="scenes", stage="dsve", overrides=["dsve.word_vectors=/nonexistent/v.txt"])


def test_status_does_not_take_an_evaluate_run_for_an_old_train_run(trained):
    from pipeline.config import load_config
    from pipeline.runner import status

    cfg, _, _ = trained
    rows = {r["stage"]: r["state"] for r in status(load_config(cfg), "scenes-vg")}
    # runs/scenes-vg holds dsve-pointing-<key>/ only: dsve itself never ran there (its name is a prefix)
    assert rows["dsve-pointing"] == "up to date" and rows["dsve"] == "missing", rows


def test_serve_draws_a_typed_phrase_over_an_uploaded_scene(trained, tmp_path):
    """`pipeline serve` explain: the phrase's heatmap over a picture, from the run's own extractor and model, drawn by
    the pointing figures' code. Its peak equals the one computed from the run's stored image maps, and on fresh
    scenes "a red circle" mostly peaks inside the circle's box."""
    import base64

    from models.common.items import Items
    from models.dsve.heatmaps import heatmap, heatmap_points
    from pipeline.datasets.spoken_scenes import _draw, _scene
    from pipeline.query import RunQueries

    from ..serving import alert, chromium, fits, post_file, served

    cfg, reports, _ = trained
    run_dir = next(r for r in reports if getattr(r, "name", "") == "dsve").run_dir
    url = f"/runs/scenes/{run_dir.name}"
    # a picture of the corpus: the uploaded file's heatmap is the one of the run's stored maps
    picture = sorted((Path(cfg).parent / "scenes" / "images" / "val2014").glob("*.jpg"))[0]
    import yaml

    from pipeline.config import load_config
    from pipeline.runner.stagekeys import resolve
    from pipeline.store import FeatureStore

    ctx = resolve(load_config(cfg), "scenes")
    store = FeatureStore(yaml.safe_load((run_dir / "params.yaml").read_text())["upstream"]["image"]["store"],
                         clip_keys=ctx.rows["resnet"])
    clip_id = next(c.clip_id for c in ctx.manifest.clips if Path(c.media["image"]).resolve() == picture.resolve())
    q = RunQueries(run_dir)
    maps = store[clip_id].mean(axis=0)[None].astype(np.float32)
    items = Items(["a"], {"image": maps}, frozenset({"image"}), groups=["a"], group_of=np.array([0]))
    heat = heatmap(q.trainer.act_maps(items, np.array([0]))[0], q.texts(["a red circle"])[0], q.trainer.fc_weight(),
                   int(q.trainer.config.pointing_nmax))
    W, H = 224, 224
    ex, ey = heatmap_points(heat[None], (W, H), "corner")
    rng = np.random.default_rng(5)
    scenes = []
    while len(scenes) < 8:
        bg, shapes = _scene(rng, W, "per_shape")
        circle = [s for s in shapes if s["shape"] == "circle"]
        if circle:
            p = tmp_path / f"scene{len(scenes)}.jpg"
            _draw(p, bg, shapes, W, len(scenes), 0)
            scenes.append((p, circle[0]))
    with served(cfg) as base:
        status, page = post_file(base, f"{url}/explain", {"q": "a red circle"}, (picture.name, picture.read_bytes()))
        assert status == 200, alert(page)
        peak = tuple(float(v) for v in re.search(r"at \(([\d.]+), ([\d.]+)\) px", page).groups())
        assert peak == (round(float(ex[0])), round(float(ey[0]))), (peak, ex, ey)
        inside = 0
        for p, s in scenes:
            status, page = post_file(base, f"{url}/explain", {"q": "a red circle"}, (p.name, p.read_bytes()))
            x, y = (float(v) for v in re.search(r"at \(([\d.]+), ([\d.]+)\) px", page).groups())
            inside += s["cx"] - s["r"] < x < s["cx"] + s["r"] and s["cy"] - s["r"] < y < s["cy"] + s["r"]
        assert inside >= 5, inside
        status, page = post_file(base, f"{url}/explain", {"q": "a red circle"}, ("x.jpg", b"GIF89a nonsense"))
        assert status == 400 and "not a readable image file" in alert(page)
        with chromium() as page:
            page.goto(f"{base}{url}")
            page.fill("#explain input[name=q]", "a red circle")
            page.set_input_files("#explain input[type=file]", str(scenes[0][0]))
            page.click("#explain button")
            img = page.locator("#explain-picture")
            assert img.evaluate("i => i.naturalWidth") > 200 and fits(page)
            png = base64.b64decode(img.get_attribute("src").split(",", 1)[1])
            assert png[:4] == b"\x89PNG"
            # a typed query's image results offer the heatmap of the phrase over each
            page.goto(f"{base}{url}")
            page.fill("#text-search input[name=q]", "a red circle")
            page.click("#text-search button")
            page.click("#results tr.result >> nth=0 >> text=heatmap")
            assert page.locator("#explain-picture").evaluate("i => i.naturalWidth") > 200
