"""Invariants of every dataset adapter and every task, written once over the registries: no group (the captions of
one picture) spans two splits or two folds, folds are disjoint and cover the items, and no unit of any task trains on
an item it validates or tests on. A new adapter or task is covered by adding its tiny example below (a test fails
until it has one), not by writing new tests."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from models.common.items import Items
from pipeline.config import load_config
from pipeline.datasets import Manifest
from pipeline.registry import DATASETS, TASKS
from pipeline.runner import make_adapter
from pipeline.training import TrainError
from pipeline.training.tasks import Unit

from ..conftest import TINY, write_config
from .test_corpora import make_ave, make_cub, make_flickr8k_audio, make_places, make_speech_coco
from .test_dsve_corpora import make_coco, make_vg
from .test_tnn import make_tnn_h5, make_tnn_npy
from .test_vgs import _spokencoco

SCENES = {"n_train": 6, "n_val": 4, "captions_per_image": 2, "size": 64, "speech": False}


def _vegas(root: Path) -> dict:
    from pipeline.datasets.vegas import VEGAS_CLASSES

    for name in (c.replace(" ", "_") for c in VEGAS_CLASSES):
        for k in range(5):
            (root / name / "videos").mkdir(parents=True, exist_ok=True)
            (root / name / "videos" / f"video_{k:05d}.mp4").write_bytes(b"")  # manifest only: never decoded
    return {}


def _folder(root: Path) -> dict:
    for cls in ("dog", "drum"):
        for k in range(3):
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / f"c{k}.mp4").write_bytes(b"")
    return {"n_folds": 3}


def _spokencoco_example(root: Path) -> dict:
    (root / "images" / "train2014").mkdir(parents=True)
    for split, first in (("train", 10), ("val", 40)):
        _spokencoco(root, [{"image": f"{split}2014/COCO_{split}2014_{first + i:012d}.jpg",
                            "captions": [{"wav": f"wavs/{split}{i}{k}.wav", "text": "a dog", "uttid": f"{split}{i}{k}"}
                                         for k in range(2)]} for i in range(3)], split)
    return {"splits": ["train", "val"]}


def _speech_coco(root: Path) -> dict:
    import json

    make_speech_coco(root)
    (root / "annotations").mkdir()
    for split, img in (("train", 298817), ("val", 108505)):  # the pictures' COCO object masks (one cat each)
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps({
            "images": [{"id": img, "width": 32, "height": 32, "file_name": f"COCO_{split}2014_{img:012d}.jpg"}],
            "annotations": [{"id": 1, "image_id": img, "category_id": 17, "iscrowd": 0, "area": 100.0,
                             "bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}],
            "categories": [{"id": 17, "name": "cat", "supercategory": "animal"}]}))
    return {}


# adapter name -> writes a tiny example of its layout under root and returns the adapter's params (or, for
# `mix`, the datasets it is made of: {"parts": {name: spec}, "params": ...})
EXAMPLES: dict[str, Callable[[Path], dict]] = {
    "ave": lambda root: make_ave(root) or {},
    "coco_captions": lambda root: make_coco(root) and {},
    "cub": lambda root: make_cub(root) or {},
    "flickr8k_audio": lambda root: make_flickr8k_audio(root) and {},
    "folder": _folder,
    "mv10k": lambda root: make_tnn_npy(root) and {},
    "places_audio": lambda root: make_places(root) or {},
    "speech_coco": _speech_coco,
    "spokencoco": _spokencoco_example,
    "spoken_scenes": lambda root: {**SCENES, "layout": "coco_captions"},
    "spoken_shapes": lambda root: {"n_images": 6, "captions_per_image": 2, "n_val": 2, "n_test": 2, "size": 64},
    "synthetic": lambda root: dict(TINY),
    "tnn_h5": lambda root: make_tnn_h5(root / "vegas_feature.h5") and {},
    "tnn_npy": lambda root: make_tnn_npy(root) and {},
    "vegas": _vegas,
    "visual_genome": lambda root: make_vg(root) or {},
    "mix": lambda root: {"parts": {"captions": {"adapter": "spoken_scenes", "root": str(root / "scenes"),
                                                "params": {**SCENES, "layout": "coco_captions"}},
                                   "videos": {"adapter": "folder", "root": str(root / "videos"),
                                              "params": _folder(root / "videos")}},
                         "params": {"parts": ["captions", "videos"], "val_fraction": 0.2, "test_fraction": 0.2}},
}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Manifest]:
    """The manifest of each adapter's example, made once per module."""
    made: dict[str, Manifest] = {}

    def get(name: str) -> Manifest:
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            example = EXAMPLES[name](root / "data")
            datasets = {"ex": {"adapter": name, "root": str(root / "data"), "params": example}}
            if name == "mix":
                datasets = {**example["parts"], "ex": {"adapter": "mix", "root": str(root), "params": example["params"]}}
            cfg = load_config(write_config(root / "stages.yaml", root / "cache", datasets))
            adapter = make_adapter(cfg, "ex")
            adapter.prepare()
            made[name] = adapter.manifest()
        return made[name]
    return get


def test_every_adapter_and_task_has_an_example():
    assert sorted(EXAMPLES) == DATASETS.names(), "add a tiny example of the new adapter's layout to EXAMPLES"


@pytest.mark.parametrize("name", DATASETS.names())
def test_no_group_spans_two_splits_or_two_folds_and_folds_cover_the_items(manifests, name):
    m = manifests(name)
    assert len(m.clips) > 0
    ids = [c.clip_id for c in m.clips]
    assert len(ids) == len(set(ids))
    splits: dict[str, set] = {}
    folds: dict[str, set] = {}
    for c in m.clips:
        if c.group is not None:
            splits.setdefault(c.group, set()).add(c.split)
            folds.setdefault(c.group, set()).add(c.fold)
    assert not {g: s for g, s in splits.items() if len(s) > 1}, "a group (one picture's captions) spans splits"
    assert not {g: f for g, f in folds.items() if len(f) > 1}, "a group spans folds"
    labelled = [c for c in m.clips if c.label is not None]
    if any(c.fold is not None for c in labelled):  # folds partition the labelled items: each in one, >= 2 folds
        assert all(c.fold is not None for c in labelled) and len({c.fold for c in labelled}) >= 2


def _items(task_name: str, m: Manifest) -> Items:
    task = TASKS.get(task_name)()
    clips = [c for c in m.clips if task.qualifies(c) is None]
    return Items([c.clip_id for c in clips], {}, media=clips, **task.annotate(clips, m))


@pytest.mark.parametrize("task_name", TASKS.names())
def test_no_unit_of_any_task_trains_on_what_it_validates_or_tests(manifests, task_name):
    task = TASKS.get(task_name)()
    planned = 0
    for name in DATASETS.names():
        m = manifests(name)
        if task.applies(m) is not None:
            continue
        items = _items(task_name, m)
        try:
            protocol, units, _ = task.plan(items, {})
        except TrainError:  # the example is too small for this protocol (e.g. no val split): not this one
            continue
        planned += 1
        n = len(items)
        for u in units:
            parts = {"train": u.train, "test": u.test, **({"val": u.val} if u.val is not None else {})}
            assert all(len(p) == 0 or (p.min() >= 0 and p.max() < n) for p in parts.values())
            assert len(np.intersect1d(u.train, u.test)) == 0 and (u.val is None or not np.intersect1d(u.train, u.val).size)
            if u.val is not None and not u.val_is_test:
                assert not np.intersect1d(u.val, u.test).size, (name, u.name)
            if items.group_of is not None:  # nor a picture whose captions it trains on
                g = items.group_of
                assert not set(g[u.train]) & set(g[u.test]), (name, u.name)
        if protocol == "folds":  # each item held out exactly once
            held = np.concatenate([u.test for u in units])
            assert sorted(held.tolist()) == list(range(n)), name
    assert planned, f"no example dataset plans task '{task_name}': add one to EXAMPLES"


def test_a_unit_refuses_any_overlap():
    with pytest.raises(ValueError, match="both trained on and held out"):
        Unit("u", np.array([0, 1]), np.array([1, 2]))
    with pytest.raises(ValueError, match="both trained on and validation"):
        Unit("u", np.array([0, 1]), np.array([2]), np.array([1]))
    with pytest.raises(ValueError, match="both validation and held out"):
        Unit("u", np.array([0]), np.array([1, 2]), np.array([2, 3]))
    Unit("u", np.array([0]), np.array([1, 2]), np.array([1, 2]), val_is_test=True)  # no test split: val is the test
    with pytest.raises(ValueError, match="val_is_test"):
        Unit("u", np.array([0]), np.array([1, 2]), np.array([2, 3]), val_is_test=True)
