"""Features stored once per content: a store is the extractor's identity alone and its rows are keyed by what the
extractor read, so the captions of one picture read one row and a second dataset over the same files computes
nothing; stores of the layout before (one per dataset, a row per item) move into the shared store with nothing
recomputed, and the runs trained on them stay reusable."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline
from pipeline.config import load_config
from pipeline.runner import RunEvents, resolve, run, status
from pipeline.store import ClipResult, StoreWriter, scan_store

from ..conftest import write_config

SCENES = {"n_train": 4, "n_val": 3, "captions_per_image": 3, "size": 64, "seed": 2, "speech": False}
VGG = {"group": "extract", "implementation": "vgg16", "params": {"weights": "random:0", "crop_size": 32}}


def _project(tmp_path: Path, root: Path, stages: dict | None = None) -> Path:
    """Two datasets over the same generated pictures (Karpathy's COCO layout and Visual Genome's), as
    scenes-captions and scenes-vg are."""
    return write_config(tmp_path / "stages.yaml", tmp_path / "cache", {
        "captions": {"adapter": "spoken_scenes", "root": str(root), "params": {**SCENES, "layout": "coco_captions"}},
        "regions": {"adapter": "spoken_scenes", "root": str(root), "params": {**SCENES, "layout": "visual_genome"}}},
        stages or {"vgg16": VGG}, execution={"workers": 1, "shard_size": 4, "progress": False})


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_captions_of_one_picture_read_one_row_and_a_second_dataset_computes_nothing(tmp_path):
    cfg = _project(tmp_path, tmp_path / "scenes")
    [rep] = run("extract", dataset="captions", config=cfg)
    ctx = resolve(load_config(cfg), "captions")
    pictures = {c.media["image"] for c in ctx.manifest.clips}
    assert len(ctx.manifest.clips) == 3 * len(pictures)
    assert rep.total == len(ctx.manifest.clips) and rep.shared == len(ctx.manifest.clips) - len(pictures)
    rows = sum(len(r["clips"]) for r in scan_store(rep.store_path).records)
    assert rows == len(pictures)  # one row per picture, not one per caption
    before = _size(tmp_path / "cache" / "stores")

    [again] = run("extract", dataset="regions", config=cfg)  # the same files, read as Visual Genome's phrases
    assert again.store_path == rep.store_path and again.computed == 0 and again.shards_computed == 0
    assert _size(tmp_path / "cache" / "stores") == before
    captions = pipeline.open_store(dataset="captions", stage="vgg16", config=cfg)
    regions = pipeline.open_store(dataset="regions", stage="vgg16", config=cfg)
    by_row = {k: cid for cid, k in ctx.rows["vgg16"].items()}
    for cid, k in resolve(load_config(cfg), "regions").rows["vgg16"].items():  # the same pictures (other paths)
        np.testing.assert_array_equal(regions[cid], captions[by_row[k]])
    assert captions.to_dask().shape[0] == len(captions.clip_ids)  # rows in item order, repeats allowed
    listed = {it["stage"]: it for it in pipeline.runner.list_cache(load_config(cfg)) if it["kind"] == "store"}
    assert listed["vgg16"]["rows"] == len(pictures) and sorted(listed["vgg16"]["datasets"]) == ["captions", "regions"]


def test_a_changed_picture_is_recomputed_and_nothing_else(tmp_path):
    from PIL import Image

    cfg = _project(tmp_path, tmp_path / "scenes")
    run("extract", dataset="captions", config=cfg)
    ctx = resolve(load_config(cfg), "captions")
    picture = ctx.manifest.clips[0].media["image"]
    readers = sum(c.media["image"] == picture for c in ctx.manifest.clips)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(picture)
    [rep] = run("extract", dataset="captions", config=cfg)
    assert rep.shards_computed == 1 and rep.computed == readers and rep.shared == readers - 1
    [rep] = run("extract", dataset="regions", config=cfg)
    assert rep.computed == 0


def _legacy_copy(cfg: Path, dataset: str, stages: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Rewrite each store of `dataset` as the code before content rows wrote it: under
    `stores/<dataset>/<stage>-<key>` (the key with the dataset in it), one entry per item keyed by its clip id and
    clip key; the shared stores are removed. Returns what each clip read."""
    ctx = resolve(load_config(cfg), dataset)
    arrays = {}
    for name in stages:
        sk = ctx.stages[name]
        store = pipeline.open_store(dataset=dataset, stage=name, config=cfg)
        arrays[name] = {cid: store[cid] for cid in store.clip_ids}
        writer = StoreWriter(sk.legacy_path, {**sk.attrs, "key": sk.view_key, "dataset": dataset},
                             load_config(cfg).backend)
        ids = list(arrays[name])
        for s in range(0, len(ids), 4):
            part = ids[s:s + 4]
            writer.write_shard(f"old{s}", [ClipResult(c, ctx.clip_keys[c], arrays[name][c]) for c in part])
        import shutil

        shutil.rmtree(sk.store_path)
    return arrays


def test_a_cache_of_the_layout_before_moves_into_the_shared_stores_with_nothing_recomputed(tmp_path,
                                                                                       tiny_synthetic_root):
    """A cache written as before (a store per dataset, a row per item) and a trained run on it: the next run moves
    every shard, recomputes no row and retrains nothing; the arrays are the same."""
    from tests.conftest import TINY

    stages = {"audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000}},
              "logmel": {"group": "extract", "implementation": "logmel", "upstream": ["audio"],
                         "params": {"preset": "vggish"}}}
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY}}, stages)
    run("extract", config=cfg)
    arrays = _legacy_copy(cfg, "tiny", ["audio", "logmel"])
    assert {r["stage"]: r["state"].split(" (")[0] for r in status(load_config(cfg), None)} == \
        {"audio": "in the old layout", "logmel": "in the old layout"}
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "extract", "--config", str(cfg), "--no-progress"],
                         capture_output=True, text=True, check=True)
    assert re.search(r"audio: moved \d+ shard\(s\) of dataset 'tiny''s store audio-", out.stderr)
    assert "nothing recomputed" in out.stderr
    assert "computed" not in out.stdout.replace("computed with", "")
    assert not (tmp_path / "cache" / "stores" / "tiny").exists()
    for name, expected in arrays.items():
        store = pipeline.open_store(dataset="tiny", stage=name, config=cfg)
        assert sorted(store.clip_ids) == sorted(expected)
        assert all(np.array_equal(store[c], a) for c, a in expected.items())
    assert all(r["state"] == "up to date" for r in status(load_config(cfg), None))


def test_runs_trained_on_the_layout_before_are_reused(tmp_path):
    """A train run's key reads each view's content for its dataset (the store key of before), so a run made on the
    old layout is reused after its stores moved."""
    from .test_train import TRAIN_STAGES, make_tnn_h5, planted

    rng = np.random.default_rng(0)
    tr, te = planted(48, rng), planted(24, rng)
    make_tnn_h5(tmp_path / "feats" / "vegas_feature.h5", **{f"{k}_train": v for k, v in tr.items()},
                **{f"{k}_test": v for k, v in te.items()})
    stages = {k: v for k, v in TRAIN_STAGES.items() if k in ("audio_features", "visual_features", "cca")}
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"feats": {"adapter": "tnn_h5", "root": str(tmp_path / "feats")}}, stages)
    first = run("train", stage="cca", config=cfg)[-1]
    _legacy_copy(cfg, "feats", ["audio_features", "visual_features"])
    again = run("train", stage="cca", config=cfg)[-1]
    assert again.reused and again.run_dir == first.run_dir


def test_two_datasets_sharing_pictures_at_once_compute_each_row_once(tmp_path):
    cfg = _project(tmp_path, tmp_path / "scenes")
    from pipeline.runner import make_adapter

    make_adapter(load_config(cfg), "captions").prepare()
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "extract", "--dataset", d, "--config",
                               str(cfg), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in ("captions", "regions")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    store = resolve(load_config(cfg), "captions").stages["vgg16"].store_path
    keys = [c["key"] for r in scan_store(store).records for c in r["clips"]]
    assert len(keys) == len(set(keys))  # no row computed twice
    for d in ("captions", "regions"):
        opened = pipeline.open_store(dataset=d, stage="vgg16", config=cfg)
        assert len(opened.clip_ids) == len(resolve(load_config(cfg), d).manifest.clips)


def test_a_damaged_shared_shard_is_seen_by_every_dataset_and_recomputed_once(tmp_path):
    cfg = _project(tmp_path, tmp_path / "scenes")
    [rep] = run("extract", dataset="captions", config=cfg)
    commit = sorted((rep.store_path / "commits").glob("*.json"))[0]
    rec = json.loads(commit.read_text())
    victim = rep.store_path / "shards" / rec["file"]
    chunk = next(p for p in sorted(victim.rglob("*")) if p.is_file() and "/c/" in str(p))
    chunk.write_bytes(b"garbage")
    for d in ("captions", "regions"):
        assert "damaged 1 shard" in {r["stage"]: r["state"] for r in status(load_config(cfg), d)}["vgg16"]
    [fixed] = run("extract", dataset="regions", config=cfg)
    assert fixed.shards_computed == 1
    for d in ("captions", "regions"):
        assert {r["stage"]: r["state"] for r in status(load_config(cfg), d)}["vgg16"] == "up to date"


@pytest.mark.parametrize("everything", [False, True])
def test_gc_keeps_a_shared_store_any_dataset_reads(tmp_path, everything):
    from pipeline.runner import collect_garbage

    cfg = _project(tmp_path, tmp_path / "scenes")
    [rep] = run("extract", dataset="captions", config=cfg)
    removed, _ = collect_garbage(load_config(cfg), everything=everything)
    assert rep.store_path not in [p for p, _ in removed] and rep.store_path.exists()
    stale = load_config(cfg, ["vgg16.fps=2.0"])
    [other] = run("extract", dataset="captions", config=stale)
    removed, _ = collect_garbage(load_config(cfg), everything=everything)  # nothing in stages.yaml reads it now
    assert [p for p, _ in removed] == [other.store_path] and rep.store_path.exists()


def test_two_datasets_old_stores_over_the_same_files_move_in_once(tmp_path):
    """Both datasets had their own store before: the first run moves the first's shards in, the second finds its
    rows there already and moves nothing; both read the same arrays as before."""
    cfg = _project(tmp_path, tmp_path / "scenes")
    run("extract", dataset="captions", config=cfg)
    run("extract", dataset="regions", config=cfg)
    before = {"captions": _legacy_copy(cfg, "captions", ["vgg16"])}
    ctx = resolve(load_config(cfg), "regions")  # the regions' old store: written from the captions' arrays
    rows_c, rows_r = resolve(load_config(cfg), "captions").rows["vgg16"], ctx.rows["vgg16"]
    by_row = {k: before["captions"]["vgg16"][c] for c, k in rows_c.items()}
    sk = ctx.stages["vgg16"]
    writer = StoreWriter(sk.legacy_path, {**sk.attrs, "key": sk.view_key, "dataset": "regions"}, "zarr")
    writer.write_shard("oldr", [ClipResult(c, ctx.clip_keys[c], by_row[k]) for c, k in rows_r.items()])
    notes: list[str] = []
    events = RunEvents()
    events.notice = notes.append
    [a] = run("extract", dataset="captions", config=cfg, events=events)
    [b] = run("extract", dataset="regions", config=cfg, events=events)
    assert a.shards_computed == b.shards_computed == 0
    assert any(n.startswith("vgg16: moved 0 shard(s) of dataset 'regions''s") and "1 held only rows it had" in n
               for n in notes), notes
    keys = {c["key"] for r in scan_store(sk.store_path).records for c in r["clips"]}
    assert keys == set(rows_c.values()) and not (sk.store_path / "commits" / "oldr.json").exists()
    assert not sk.legacy_path.exists()
    regions = pipeline.open_store(dataset="regions", stage="vgg16", config=cfg)
    assert all(np.array_equal(regions[c], by_row[k]) for c, k in rows_r.items())
