"""`coco_captions`: MSCOCO images with their written captions in Karpathy's split (`dataset_coco.json`), the
corpus DSVE-loc (Engilberge et al., CVPR 2018) trains on: one clip per caption, grouped by image."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, Manifest
from .speech_coco import instances_files

log = logging.getLogger(__name__)

SPLIT_FILES = ["dataset_coco.json", "dataset.json"]  # caption_datasets.zip's name, then coco.zip's (the reference's)
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclass
class CocoCaptionsConfig:
    split_file: str | None = None  # default: ROOT/dataset_coco.json, else ROOT/dataset.json
    image_root: str | None = None  # <image_root>/<filepath>/<filename>; default ROOT/images if present, else ROOT
    restval: bool = True  # train = Karpathy's train + restval (the reference's "trainrv"); false: restval left out
    captions_per_image: int = 5  # the first N sentences of each image (a few COCO images have 6 or 7)
    instances: str = "annotations/instances_{split}.json"  # COCO object annotations, where present
    skip_missing: bool = False

    def __post_init__(self) -> None:
        if self.captions_per_image < 1:
            raise ValueError(f"captions_per_image must be >= 1, got {self.captions_per_image}")


@register_dataset
class CocoCaptionsDataset(DatasetAdapter):
    """MSCOCO + Karpathy's dataset_coco.json: one clip per written caption, split train (+restval) / val / test."""

    name = "coco_captions"
    Config = CocoCaptionsConfig
    published = ("Lin et al. 2014: cocodataset.org (train2014, val2014 images; annotations_trainval2014.zip); "
                 "split: Karpathy & Fei-Fei 2015, cs.stanford.edu/people/karpathy/deepimagesent (dataset_coco.json)")
    layout = ("ROOT/dataset_coco.json (or dataset.json; param `split_file`): {images: [{filepath: 'val2014',\n"
              "  filename: 'COCO_val2014_<12-digit id>.jpg', cocoid, split: train|restval|val|test,\n"
              "  sentences: [{raw, sentid, tokens}, ...]}, ...]}\n"
              "ROOT/images/<filepath>/<filename>, or ROOT/<filepath>/<filename>  (param `image_root`)\n"
              "ROOT/annotations/instances_<train2014|val2014>.json: COCO object annotations (optional;\n"
              "  param `instances`)")

    def _split_file(self) -> Path:
        if self.config.split_file:  # relative to ROOT, or absolute
            return self.require(self.config.split_file, "Karpathy's split")
        return self.find(SPLIT_FILES, "Karpathy's split file")

    def _image_root(self) -> Path:
        if self.config.image_root:
            root = Path(self.config.image_root)
            root = root if root.is_absolute() else self.root / root
            if not root.is_dir():
                raise self.error(f"image_root {root} is not a folder; point it at the folder holding train2014/ "
                                 "and val2014/")
            return root
        return self.root / "images" if (self.root / "images").is_dir() else self.root

    def _entries(self, doc: Any, path: Path) -> list[tuple[int, str, str, str, list[tuple[int, str]]]]:
        """(cocoid, filepath, filename, Karpathy split, [(sentid, raw caption)]) per image; one error per bad entry."""
        images = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(images, list):
            raise self.error(f"{path} has no 'images' list")
        out = []
        for i, img in enumerate(images):
            try:
                split = img["split"]
                if split not in KARPATHY_SPLITS:
                    raise self.error(f"{path}: images[{i}] has split {split!r}; Karpathy's splits are "
                                     f"{', '.join(KARPATHY_SPLITS)}")
                sents = []
                for s in img["sentences"]:
                    raw = s["raw"] if "raw" in s else " ".join(s["tokens"])
                    if not isinstance(raw, str):
                        raise TypeError(f"raw must be a string, got {raw!r}")
                    sents.append((int(s["sentid"]), raw.strip()))
                fields = (img["filepath"], img["filename"])
                if not all(isinstance(f, str) for f in fields):
                    raise TypeError(f"filepath and filename must be strings, got {fields}")
                out.append((int(img["cocoid"]), *fields, split, sents))
            except (KeyError, TypeError, ValueError) as e:
                raise self.error(f"{path}: images[{i}] is not {{filepath, filename, cocoid, split, sentences: "
                                 f"[{{raw, sentid}}]}} ({type(e).__name__}: {e}): {str(img)[:160]}") from None
        return out

    def manifest(self) -> Manifest:
        self.prepare()
        path = self._split_file()
        entries = self._entries(self.read_json(path), path)
        images = self._image_root()
        clips, folders, dropped = [], {}, 0
        for cocoid, filepath, filename, split, sents in entries:
            if split == "restval" and not self.config.restval:
                dropped += 1
                continue
            ours = KARPATHY_SPLITS[split]
            image = self.under(f"{filepath}/{filename}", f"{path.name} image {cocoid}", images)
            folders.setdefault(ours, set()).add(filepath)
            for sentid, raw in sents[:self.config.captions_per_image]:
                clips.append(Clip(clip_id=f"{cocoid}/{sentid}", group=str(cocoid), split=ours, text=(raw,),
                                  media={"image": image}))
        if dropped:
            log.info("dataset '%s': %d restval images left out (restval: false)", self.dataset_name, dropped)
        if not clips:
            raise self.error(f"{path} lists no captions")
        clips = self.check_media(clips, self.config.skip_missing)
        return Manifest(self.dataset_name, self.root, clips, annotations=self._annotations(folders))

    def _annotations(self, folders: dict[str, set[str]]) -> dict[str, Path]:
        """Our split -> the COCO instances file of its images, for each split whose images all come from one
        COCO folder that has one (Karpathy's val and test: val2014; train without restval: train2014)."""
        files = instances_files(self, sorted({f for fs in folders.values() for f in fs}))
        out = {}
        for split, fs in folders.items():
            key = next(iter(fs)).removesuffix("2014") if len(fs) == 1 else None
            if key in files:
                out[split] = files[key]
        return out
