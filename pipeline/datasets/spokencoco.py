"""`spokencoco`: SpokenCOCO (Hsu et al., 2021): 600k read spoken captions of MSCOCO images; one clip per
spoken caption, grouped by image. VGS alignment's training corpus."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, Manifest
from .speech_coco import instances_files

SPLITS = {"train": "SpokenCOCO_train.json", "val": "SpokenCOCO_val.json"}


@dataclass
class SpokenCocoConfig:
    splits: list[str] | None = None  # default: train and val (those present)
    image_root: str = "images"  # MSCOCO: <image_root>/<the json's image path>, e.g. val2014/COCO_val2014_<id>.jpg
    instances: str = "annotations/instances_{split}.json"  # COCO object annotations, where present
    skip_missing: bool = False


@register_dataset
class SpokenCocoDataset(DatasetAdapter):
    """SpokenCOCO: SpokenCOCO_{train,val}.json listing each image's spoken captions (wavs under the root)."""

    name = "spokencoco"
    Config = SpokenCocoConfig
    published = ("Hsu et al. 2021: groups.csail.mit.edu/sls/downloads/placesaudio (SpokenCOCO.tar.gz); "
                 "images: cocodataset.org (train2014, val2014)")
    layout = ("ROOT/SpokenCOCO_train.json, ROOT/SpokenCOCO_val.json: {data: [{image: 'val2014/COCO_val2014_<id>.jpg',\n"
              "  captions: [{wav: 'wavs/val/0/<uttid>.wav', text, speaker, uttid}, ...]}, ...]}\n"
              "ROOT/wavs/...  (each caption's `wav`, relative to ROOT)\n"
              "ROOT/images/<the json's image path>  (MSCOCO; param `image_root`)\n"
              "ROOT/annotations/instances_<train2014|val2014>.json  (optional: COCO object annotations)")

    def manifest(self) -> Manifest:
        self.prepare()
        wanted = self.config.splits or list(SPLITS)
        unknown = [s for s in wanted if s not in SPLITS]
        if unknown:
            raise self.error(f"unknown split(s) {unknown}; SpokenCOCO has {list(SPLITS)}")
        files = {s: self.root / SPLITS[s] for s in wanted}
        if self.config.splits and any(not p.is_file() for p in files.values()):
            raise self.error(f"missing file {next(p for p in files.values() if not p.is_file())}")
        if not any(p.is_file() for p in files.values()):
            raise self.error(f"none of {', '.join(str(p) for p in files.values())} exists")
        image_root = Path(self.config.image_root)
        image_root = image_root if image_root.is_absolute() else self.root / image_root
        clips, image_splits = [], set()
        for split, path in files.items():
            if not path.is_file():
                continue
            doc = self.read_json(path)
            try:
                entries = doc["data"]
                for k, entry in enumerate(entries):
                    image = str(entry["image"])
                    group = image_id(image)
                    image_splits.add(Path(image).parts[0] if len(Path(image).parts) > 1 else f"{split}2014")
                    for cap in entry["captions"]:
                        wav = str(cap["wav"])
                        what = f"{path.name} entry {k}"
                        clips.append(Clip(
                            clip_id=f"{split}/{cap.get('uttid') or Path(wav).stem}", split=split, group=group,
                            text=(str(cap.get("text", "")),),
                            media={"audio": self.under(wav, what), "image": self.under(image, what, image_root)}))
            except (KeyError, TypeError, AttributeError) as e:
                raise self.error(f"{path}: expected {{data: [{{image, captions: [{{wav, text}}]}}]}} "
                                 f"({type(e).__name__}: {e})") from None
        if not clips:
            raise self.error("no spoken captions listed")
        clips = self.check_media(clips, self.config.skip_missing)
        return Manifest(self.dataset_name, self.root, clips, annotations=instances_files(self, sorted(image_splits)))


def image_id(image: str) -> str:
    """The COCO image id of an image path (COCO_val2014_000000325114.jpg -> 325114), else the path's stem."""
    m = re.search(r"_(\d{6,})\.\w+$", image)
    return str(int(m.group(1))) if m else Path(image).stem
