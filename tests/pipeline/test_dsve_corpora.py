"""DSVE-loc's corpora: MSCOCO captions in Karpathy's split (`coco_captions`), Visual Genome regions
(`visual_genome`), both on miniature layouts with every layout error, and the generated scenes written in
both layouts (no speech) and read back by the real adapters."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cache import DigestMemo
from pipeline.config import load_config
from pipeline.datasets import Clip, DatasetError, Manifest
from pipeline.datasets.base import MARKER
from pipeline.datasets.coco_captions import CocoCaptionsConfig, CocoCaptionsDataset
from pipeline.datasets.spoken_scenes import COLOURS, VG_OFFSET, SpokenScenesConfig, SpokenScenesDataset
from pipeline.datasets.visual_genome import VisualGenomeConfig, VisualGenomeDataset

REPO = Path(__file__).resolve().parents[2]
TEXT_SCENES = {"n_train": 4, "n_val": 3, "captions_per_image": 3, "seed": 2, "speech": False}


# -- Clip fields -----------------------------------------------------------------------------------------------

def test_box_and_image_size_are_annotations_outside_clip_keys(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    plain = Clip("1/2", {"image": tmp_path / "a.jpg"}, text=("a dog",), split="test")
    boxed = Clip("1/2", {"image": tmp_path / "a.jpg"}, text=("a dog",), split="test", box=(1.0, 2.0, 3.0, 4.0),
                 image_size=(80, 60))
    assert plain.box is None and plain.image_size is None
    memo = DigestMemo(tmp_path / "digests")
    keys = [Manifest("d", tmp_path, [c]).clip_keys(memo) for c in (plain, boxed)]
    assert keys[0] == keys[1] and Manifest("d", tmp_path, [plain]).digest(memo) == Manifest("d", tmp_path, [boxed]).digest(memo)


# -- coco_captions ---------------------------------------------------------------------------------------------

def _karpathy_image(cocoid: int, folder: str, split: str, n: int = 5) -> dict:
    return {"filepath": folder, "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "cocoid": cocoid, "split": split,
            "sentences": [{"raw": f"caption {k} of {cocoid} ", "tokens": ["caption"], "sentid": cocoid * 10 + k}
                          for k in range(n)]}


def make_coco(root: Path, images: list[dict] | None = None, under_images: bool = True) -> list[dict]:
    """Karpathy's dataset_coco.json over four images (one per split, restval from val2014) + the JPEGs."""
    images = images if images is not None else [
        _karpathy_image(11, "train2014", "train", 6), _karpathy_image(22, "val2014", "restval"),
        _karpathy_image(33, "val2014", "val"), _karpathy_image(44, "val2014", "test", 3)]
    base = root / "images" if under_images else root
    for img in images:
        if isinstance(img, dict) and ".." not in str(img.get("filepath")):
            path = base / str(img.get("filepath")) / str(img.get("filename"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"jpeg")
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    return images


def _coco(root: Path, **params) -> Manifest:
    return CocoCaptionsDataset("coco", root, CocoCaptionsConfig(**params)).manifest()


def test_coco_captions_clips_splits_and_restval(tmp_path):
    make_coco(tmp_path)
    m = _coco(tmp_path)
    assert [c.clip_id for c in m.clips[:6]] == ["11/110", "11/111", "11/112", "11/113", "11/114", "22/220"]
    assert len(m) == 5 + 5 + 5 + 3  # the 6th caption of image 11 is left out (the first 5, as the reference)
    by = m.by_id()
    assert (by["22/223"].split, by["22/223"].group, by["22/223"].text) == ("train", "22", ("caption 3 of 22",))
    assert {c.split for c in m.clips if c.group == "33"} == {"val"} and {c.split for c in m.clips if c.group == "44"} == {"test"}
    assert by["44/441"].media["image"] == (tmp_path / "images" / "val2014" / "COCO_val2014_000000000044.jpg").absolute()
    assert all(c.box is None and c.image_size is None and not c.words for c in m.clips)
    no_rv = _coco(tmp_path, restval=False, captions_per_image=2)
    assert [c.clip_id for c in no_rv.clips] == ["11/110", "11/111", "33/330", "33/331", "44/440", "44/441"]
    assert len(_coco(tmp_path, captions_per_image=7)) == 6 + 5 + 5 + 3
    with pytest.raises(ValueError, match="captions_per_image must be >= 1"):
        CocoCaptionsConfig(captions_per_image=0)


def test_coco_captions_image_root_and_instances(tmp_path):
    make_coco(tmp_path / "flat", under_images=False)  # train2014/ and val2014/ right under the root
    m = _coco(tmp_path / "flat")
    assert m.clips[0].media["image"] == (tmp_path / "flat" / "train2014" / "COCO_train2014_000000000011.jpg").absolute()
    assert m.annotations == {}
    ann = tmp_path / "flat" / "annotations"
    ann.mkdir()
    for name in ("instances_val2014.json", "instances_train2014.json"):
        (ann / name).write_text("{}")
    # a split's instances file is the one of the COCO folder all its images come from: train+restval has two
    assert _coco(tmp_path / "flat").annotations == {"val": (ann / "instances_val2014.json").absolute(),
                                                    "test": (ann / "instances_val2014.json").absolute()}
    assert _coco(tmp_path / "flat", restval=False).annotations["train"] == (ann / "instances_train2014.json").absolute()
    make_coco(tmp_path / "other")
    (tmp_path / "other" / "dataset_coco.json").rename(tmp_path / "karpathy.json")
    m = _coco(tmp_path / "other", split_file=str(tmp_path / "karpathy.json"), image_root="images")
    assert len(m) == 18


def test_coco_captions_broken_layouts(tmp_path):
    with pytest.raises(DatasetError, match="root .*nothing does not exist; expected layout"):
        _coco(tmp_path / "nothing")
    root = tmp_path / "coco"
    root.mkdir()
    with pytest.raises(DatasetError, match="(?s)missing Karpathy's split file: looked for .*dataset_coco.json or "
                                           ".*dataset.json; expected layout.*filepath"):
        _coco(root)
    with pytest.raises(DatasetError, match="missing Karpathy's split file .*mine.json"):
        _coco(root, split_file="mine.json")
    (root / "dataset_coco.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match="malformed json in .*dataset_coco.json at line 1"):
        _coco(root)
    (root / "dataset_coco.json").write_text(json.dumps({"imgs": []}))
    with pytest.raises(DatasetError, match="dataset_coco.json has no 'images' list"):
        _coco(root)
    good = _karpathy_image(1, "val2014", "val")
    broken = [
        ({k: v for k, v in good.items() if k != "sentences"}, r"images\[1\] is not \{filepath, filename, cocoid.*KeyError"),
        ({k: v for k, v in good.items() if k != "cocoid"}, r"images\[1\] is not .*KeyError: 'cocoid'"),
        ({**good, "sentences": [{"raw": "x"}]}, r"images\[1\] is not .*sentid"),
        ({**good, "sentences": [{"raw": 3, "sentid": 1}]}, r"images\[1\] is not .*raw must be a string"),
        ({**good, "filename": 5}, r"images\[1\] is not .*filepath and filename must be strings"),
        ({**good, "split": "dev"}, r"images\[1\] has split 'dev'; Karpathy's splits are train, restval, val, test"),
        ("COCO_1.jpg", r"images\[1\] is not"),
        ({**good, "filepath": "../../.."}, r"dataset_coco.json image 1: path '../../../COCO_val2014_000000000001.jpg' "
                                           "escapes the dataset root"),
    ]
    for bad, message in broken:
        make_coco(root, [_karpathy_image(2, "val2014", "test"), bad])
        with pytest.raises(DatasetError, match=message) as e:
            _coco(root)
        assert "dataset_coco.json" in str(e.value)
    make_coco(root, [])
    with pytest.raises(DatasetError, match="dataset_coco.json lists no captions"):
        _coco(root)
    make_coco(root, [_karpathy_image(2, "val2014", "test"), _karpathy_image(3, "val2014", "val")])
    (root / "images" / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    with pytest.raises(DatasetError, match="(?s)5 media file.*COCO_val2014_000000000003.jpg.*skip_missing"):
        _coco(root)
    assert {c.group for c in _coco(root, skip_missing=True).clips} == {"2"}
    with pytest.raises(DatasetError, match="image_root .*elsewhere is not a folder"):
        _coco(root, image_root="elsewhere")


# -- visual_genome ---------------------------------------------------------------------------------------------

def _region(region_id: int, image_id: int, phrase: str, box: tuple) -> dict:
    x, y, w, h = box
    return {"region_id": region_id, "image_id": image_id, "phrase": phrase, "x": x, "y": y, "width": w, "height": h}


def make_vg(root: Path) -> None:
    """Five VG images: 1 (COCO 100), 2 (COCO 200, in VG_100K_2, v1.0's `id` key), 3 (no coco_id),
    4 (COCO 101, not on disk), 5 (COCO 102, no regions)."""
    image_data = [{"image_id": 1, "coco_id": 100, "width": 800, "height": 600, "url": "u"},
                  {"id": 2, "coco_id": 200, "width": 500, "height": 333, "url": "u"},
                  {"image_id": 3, "coco_id": None, "width": 640, "height": 480, "url": "u"},
                  {"image_id": 4, "coco_id": 101, "width": 100, "height": 100, "url": "u"},
                  {"image_id": 5, "coco_id": 102, "width": 100, "height": 100, "url": "u"}]
    regions = [{"id": 1, "regions": [_region(11, 1, "a man riding a horse ", (10, 20, 300, 200)),
                                     _region(12, 1, "blue sky", (0, 0, 800, 120.5)),
                                     _region(13, 1, "  ", (1, 1, 2, 2))]},
               {"id": 2, "regions": [_region(21, 2, "a red car", (5, 6, 7, 8))]},
               {"id": 3, "regions": [_region(31, 3, "a tree", (1, 2, 3, 4))]},
               {"id": 4, "regions": [_region(41, 4, "a dog", (1, 2, 3, 4)), _region(42, 4, "a cat", (1, 2, 3, 4))]},
               {"id": 5, "regions": []}]
    for folder, ids in (("VG_100K", (1, 3, 5)), ("VG_100K_2", (2,))):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in ids:
            (root / folder / f"{i}.jpg").write_bytes(b"jpeg")
    (root / "image_data.json").write_text(json.dumps(image_data))
    (root / "region_descriptions.json").write_text(json.dumps(regions))
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(
        {"images": [{"id": 100, "file_name": "COCO_val2014_000000000100.jpg"}, {"id": 101}, {"id": 102}],
         "annotations": []}))


def _vg(root: Path, **params) -> Manifest:
    return VisualGenomeDataset("vg", root, VisualGenomeConfig(**params)).manifest()


def test_visual_genome_regions_boxes_and_coco_selection(tmp_path, caplog):
    make_vg(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets.visual_genome"):
        m = _vg(tmp_path)
    assert "1 of 4 images are missing" in caplog.text and "their 2 region phrases are left out" in caplog.text
    assert [(c.clip_id, c.group, c.split, c.text) for c in m.clips] == [
        ("1/11", "1", "test", ("a man riding a horse",)), ("1/12", "1", "test", ("blue sky",)),
        ("2/21", "2", "test", ("a red car",))]  # image 3 is no COCO image; region 13's phrase is empty
    by = m.by_id()
    assert by["1/12"].box == (0.0, 0.0, 800.0, 120.5) and by["1/12"].image_size == (800, 600)
    assert by["2/21"].box == (5.0, 6.0, 7.0, 8.0) and by["2/21"].image_size == (500, 333)
    assert by["2/21"].media["image"] == (tmp_path / "VG_100K_2" / "2.jpg").absolute()
    assert m.annotations == {}
    # the reference's selection: VG images whose coco_id is an image of COCO's val2014 annotations
    val = _vg(tmp_path, coco_ids="annotations/captions_val2014.json")
    assert [c.clip_id for c in val.clips] == ["1/11", "1/12"]
    absolute = _vg(tmp_path, coco_ids=str(tmp_path / "annotations" / "captions_val2014.json"))
    assert [c.clip_id for c in absolute.clips] == ["1/11", "1/12"]


def test_visual_genome_broken_layouts(tmp_path):
    with pytest.raises(DatasetError, match="expected layout"):
        _vg(tmp_path / "nothing")
    root = tmp_path / "vg"
    make_vg(root)
    (root / "region_descriptions.json").rename(root / "regions.json")
    with pytest.raises(DatasetError, match="(?s)missing region descriptions file .*region_descriptions.json; "
                                           "expected layout.*VG_100K_2"):
        _vg(root)
    (root / "regions.json").rename(root / "region_descriptions.json")
    (root / "image_data.json").rename(root / "images.json")
    with pytest.raises(DatasetError, match="missing image metadata file .*image_data.json"):
        _vg(root)
    (root / "images.json").rename(root / "image_data.json")
    with pytest.raises(DatasetError, match="missing COCO annotations \\(param `coco_ids`\\) file .*instances_val2014"):
        _vg(root, coco_ids="annotations/instances_val2014.json")
    (root / "annotations" / "bad.json").write_text(json.dumps({"images": [{"file_name": "x.jpg"}]}))
    with pytest.raises(DatasetError, match="bad.json \\(param `coco_ids`\\) is not a COCO annotations file"):
        _vg(root, coco_ids="annotations/bad.json")
    (root / "annotations" / "other.json").write_text(json.dumps({"images": [{"id": 999}]}))
    with pytest.raises(DatasetError, match="no image in .*image_data.json has a coco_id that is an image of "
                                           "annotations/other.json"):
        _vg(root, coco_ids="annotations/other.json")

    def broken(name: str, doc: object, message: str) -> None:
        saved = (root / name).read_text()
        (root / name).write_text(json.dumps(doc))
        try:
            with pytest.raises(DatasetError, match=message) as e:
                _vg(root)
            assert name in str(e.value)
        finally:
            (root / name).write_text(saved)

    broken("image_data.json", {"images": []}, "image_data.json is not a list of images")
    broken("image_data.json", [{"image_id": 1, "coco_id": 5, "width": 10}],
           r"entry \[0\] is not \{image_id, coco_id, width, height\} \(KeyError: 'height'\)")
    broken("image_data.json", [{"image_id": 1, "coco_id": 5, "width": 10, "height": "tall"}],
           r"entry \[0\] .*width and height must be positive integers")
    broken("image_data.json", [{"coco_id": 5, "width": 10, "height": 10}], r"entry \[0\] .*KeyError: 'id'")
    broken("region_descriptions.json", {"1": []}, "region_descriptions.json is not a list")
    broken("region_descriptions.json", [{"id": 1, "regions": [{"region_id": 1, "phrase": "x", "x": 1, "y": 2}]}],
           r"entry \[0\] is not \{id, regions: \[\{region_id, phrase, x, y, width, height\}\]\} \(KeyError: 'width'\)")
    broken("region_descriptions.json", [{"id": 1, "regions": [_region(1, 1, "x", (1, "2", 3, 4))]}],
           "x, y, width, height must be numbers")
    broken("region_descriptions.json", [{"id": 1, "regions": [_region(1, 1, None, (1, 2, 3, 4))]}],
           "phrase a string")
    broken("region_descriptions.json", [{"id": 1}], r"entry \[0\] .*KeyError: 'regions'")
    broken("region_descriptions.json", [{"id": 3, "regions": []}], "describes no region of the selected images")
    for i in (1, 5):
        (root / "VG_100K" / f"{i}.jpg").unlink()
    (root / "VG_100K_2" / "2.jpg").unlink()
    with pytest.raises(DatasetError, match="none of the 4 selected images is on disk \\(first: .*VG_100K/1.jpg\\)"):
        _vg(root)
    for folder in ("VG_100K", "VG_100K_2"):
        shutil.rmtree(root / folder)
    with pytest.raises(DatasetError, match="no image folder: looked for .*VG_100K and .*VG_100K_2"):
        _vg(root)


# -- the generated scenes in both layouts -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "scenes-text"
    SpokenScenesDataset("scenes", root, SpokenScenesConfig(**TEXT_SCENES, layout="coco_captions")).prepare()
    return root


def _scenes(root: Path, **params) -> SpokenScenesDataset:
    return SpokenScenesDataset("scenes", root, SpokenScenesConfig(**{**TEXT_SCENES, **params}))


def test_generated_scenes_without_speech_in_karpathy_layout(text_scenes):
    assert not any((text_scenes / p).exists() for p in ("train2014", "val2014", "SpokenCOCO_train.json"))
    m = _scenes(text_scenes, layout="coco_captions").manifest()
    assert len(m) == 7 * 3 and {c.split for c in m.clips} == {"train", "val"}
    assert len({c.group for c in m.clips if c.split == "val"}) == 3
    assert set(m.annotations) == {"train", "val"}
    karpathy = json.loads((text_scenes / "dataset_coco.json").read_text())["images"]
    sentids = [s["sentid"] for img in karpathy for s in img["sentences"]]
    assert len(set(sentids)) == len(sentids) == 21
    # the real adapter with its defaults reads the same clips: the text names the shapes annotated in the image
    assert [(c.clip_id, c.text) for c in _coco(text_scenes).clips] == [(c.clip_id, c.text) for c in m.clips]
    instances = json.loads((text_scenes / "annotations" / "instances_train2014.json").read_text())
    cats = {c["id"]: c["name"] for c in instances["categories"]}
    c = m.clips[0]
    shapes = {cats[a["category_id"]] for a in instances["annotations"] if a["image_id"] == int(c.group)}
    assert shapes == {w for w in c.text[0].split() if w in cats.values()}


def test_generated_scenes_in_visual_genome_layout(text_scenes):
    vg = _scenes(text_scenes, layout="visual_genome").manifest()
    groups = sorted({int(c.group) for c in vg.clips})
    assert groups == [VG_OFFSET + i for i in (5, 6, 7)]  # the val2014 scenes, as the pointing game keeps
    everything = _vg(text_scenes)  # the real adapter, every VG image with a coco_id: train and val scenes
    assert sorted({int(c.group) for c in everything.clips}) == [VG_OFFSET + i for i in range(1, 8)]
    anns = {}
    for split in ("train2014", "val2014"):
        anns.update({a["id"]: a for a in json.loads((text_scenes / "annotations" / f"instances_{split}.json").read_text())
                     ["annotations"]})
    assert len(everything) == len(anns)  # one region per shape
    for c in everything.clips:
        coco_id = int(c.group) - VG_OFFSET
        assert c.image_size == (224, 224) and c.split == "test"
        folder = "train2014" if coco_id <= 4 else "val2014"
        assert os.path.samefile(c.media["image"], text_scenes / "images" / folder / f"COCO_{folder}_{coco_id:012d}.jpg")
        article, colour, shape = c.text[0].split()
        ann = anns[int(c.clip_id.split("/")[1])]
        assert article in ("the", "a") and ann["image_id"] == coco_id
        # the box is the COCO bbox (clipped to the image) rounded outwards to whole pixels
        x, y, w, h = c.box
        bx, by, bw, bh = ann["bbox"]
        x0, y0, x1, y1 = max(bx, 0), max(by, 0), min(bx + bw, 224), min(by + bh, 224)
        assert x <= x0 < x + 1 and y <= y0 < y + 1 and x + w - 1 < x1 <= x + w and y + h - 1 < y1 <= y + h
        # ... and it is where the shape's colour is: no pixel of that colour outside it, and the tight box of that
        # colour's pixels within 3 px of it (a triangle's apex is a few pixels wide, which JPEG's chroma blurs)
        img = np.asarray(Image.open(c.media["image"]).convert("RGB")).astype(int)
        ys, xs = np.nonzero(np.abs(img - np.array(COLOURS[colour])).sum(-1) < 60)
        assert len(xs) > 0.4 * w * h, (c.clip_id, colour, shape)
        off = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) - np.array([x, y, x + w, y + h])
        assert off[0] >= 0 and off[1] >= 0 and off[2] <= 0 and off[3] <= 0 and np.abs(off).max() <= 3, (c.clip_id, off)


def test_generated_scenes_marker_speech_layouts_and_old_roots(text_scenes, tmp_path):
    marker = json.loads((text_scenes / MARKER).read_text())
    assert marker["speech"] is False and "layout" not in marker
    # speech at its default stays out of the marker: sets generated before the param existed still match
    spoken = _scenes(tmp_path / "old", speech=True, layout="speech_coco")
    assert "speech" not in spoken.generation_params(vars(spoken.config))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / MARKER).write_text(json.dumps({k: v for k, v in marker.items() if k != "speech"}))
    spoken.prepare()  # matches: nothing to generate (no espeak-ng run)
    (tmp_path / "old" / "annotations").mkdir()
    (tmp_path / "old" / "annotations" / "instances_val2014.json").write_text("{}")
    with pytest.raises(DatasetError, match="old has no dataset_coco.json, which the coco_captions layout reads: the "
                                           "set was generated before the generator wrote that layout"):
        _scenes(tmp_path / "old", speech=True, layout="coco_captions").manifest()
    with pytest.raises(DatasetError, match="holds a spoken_scenes set generated with .*'speech': False"):
        _scenes(text_scenes, speech=True, layout="speech_coco").prepare()
    with pytest.raises(DatasetError, match="no val2014/json, which the speech_coco layout reads: the set was "
                                           "generated with speech: false"):
        _scenes(text_scenes, speech=True, layout="speech_coco").manifest()
    with pytest.raises(ValueError, match="layout spokencoco reads spoken captions, but speech is false"):
        SpokenScenesConfig(**TEXT_SCENES, layout="spokencoco")
    with pytest.raises(ValueError, match="layout must be one of"):
        SpokenScenesConfig(layout="flickr")


def test_spoken_and_unspoken_scenes_are_the_same_scenes(tmp_path):
    params = {"n_train": 2, "n_val": 2, "captions_per_image": 2, "seed": 5}
    _scenes(tmp_path / "spoken", **params, speech=True, layout="speech_coco").prepare()
    _scenes(tmp_path / "text", **params, layout="coco_captions").prepare()
    for rel in ("dataset_coco.json", "region_descriptions.json", "annotations/instances_val2014.json",
                "images/val2014/COCO_val2014_000000000004.jpg"):
        assert (tmp_path / "spoken" / rel).read_bytes() == (tmp_path / "text" / rel).read_bytes(), rel
    said = {c.clip_id.split("_")[1]: c.text for c in _scenes(tmp_path / "spoken", **params, speech=True).manifest().clips}
    written = {c.clip_id.split("/")[1]: c.text for c in _scenes(tmp_path / "spoken", **params, speech=True,
                                                                layout="coco_captions").manifest().clips}
    assert said == written and len(said) == 8  # sentid = SPEECH-COCO's captionID


def test_stages_yaml_declares_the_dsve_corpora():
    cfg = load_config(REPO / "stages.yaml")
    ds = cfg.datasets
    assert (ds["coco"].adapter, ds["visual-genome"].adapter) == ("coco_captions", "visual_genome")
    for name, layout in (("scenes-captions", "coco_captions"), ("scenes-vg", "visual_genome")):
        assert ds[name].adapter == "spoken_scenes" and ds[name].root == ds["scenes-captions"].root
        assert ds[name].params["speech"] is False and ds[name].params["layout"] == layout
