"""`visual_genome`: Visual Genome region descriptions (Krishna et al., 2017) of the images that are also
MSCOCO images: DSVE-loc's "pointing game" (Engilberge et al., CVPR 2018). One clip per region phrase, with
the region's box and the image's size; every clip is a test item."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, Manifest

log = logging.getLogger(__name__)

IMAGE_DIRS = ["VG_100K", "VG_100K_2"]


@dataclass
class VisualGenomeConfig:
    coco_ids: str | None = None  # a COCO annotations json (e.g. annotations/captions_val2014.json, relative to ROOT
    #                              or absolute): keep the VG images whose coco_id is one of its images, as the
    #                              reference does with val2014; None: every VG image that has a coco_id


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@register_dataset
class VisualGenomeDataset(DatasetAdapter):
    """Visual Genome: image_data.json + region_descriptions.json + VG_100K*/<image_id>.jpg; one clip per region."""

    name = "visual_genome"
    Config = VisualGenomeConfig
    published = ("Krishna et al. 2017: visualgenome.org (image_data.json, region_descriptions.json, "
                 "images.zip -> VG_100K/, images2.zip -> VG_100K_2/)")
    layout = ("ROOT/image_data.json: [{image_id (or id), coco_id (or null), width, height, url}, ...]\n"
              "ROOT/region_descriptions.json: [{id: <image_id>, regions: [{region_id, image_id, phrase, x, y, width,\n"
              "  height}, ...]}, ...]\n"
              "ROOT/VG_100K/<image_id>.jpg or ROOT/VG_100K_2/<image_id>.jpg\n"
              "param `coco_ids`: a COCO annotations json whose images select the VG images (e.g. COCO's\n"
              "  annotations/captions_val2014.json)")

    def _coco_ids(self) -> set[int] | None:
        if self.config.coco_ids is None:
            return None
        path = self.require(self.config.coco_ids, "COCO annotations (param `coco_ids`)")
        doc = self.read_json(path)
        images = doc.get("images") if isinstance(doc, dict) else None
        try:
            return {int(img["id"]) for img in images}  # type: ignore[union-attr]
        except (KeyError, TypeError, ValueError) as e:
            raise self.error(f"{path} (param `coco_ids`) is not a COCO annotations file {{images: [{{id, ...}}]}} "
                             f"({type(e).__name__}: {e})") from None

    def _images(self, path: Path, wanted: set[int] | None) -> dict[int, tuple[int, int]]:
        """VG image id -> (width, height) of the images that are (the wanted) COCO images, in the file's order."""
        doc = self.read_json(path)
        if not isinstance(doc, list):
            raise self.error(f"{path} is not a list of images")
        out = {}
        for i, img in enumerate(doc):
            try:
                vg_id = int(img["image_id"] if "image_id" in img else img["id"])
                coco_id = img.get("coco_id")
                size = (img["width"], img["height"])
                if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
                    raise ValueError(f"width and height must be positive integers, got {size}")
                if coco_id is not None and (wanted is None or int(coco_id) in wanted):
                    out[vg_id] = size
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise self.error(f"{path}: entry [{i}] is not {{image_id, coco_id, width, height}} "
                                 f"({type(e).__name__}: {e}): {str(img)[:160]}") from None
        return out

    def _regions(self, path: Path, sizes: dict[int, tuple[int, int]]) -> dict[int, list[tuple[int, str, tuple]]]:
        """VG image id -> [(region id, phrase, (x, y, w, h))] for the images in `sizes`."""
        doc = self.read_json(path)
        if not isinstance(doc, list):
            raise self.error(f"{path} is not a list of {{id, regions}}")
        out: dict[int, list[tuple[int, str, tuple]]] = {}
        for i, entry in enumerate(doc):
            try:
                regions = entry["regions"]
                if "id" in entry or "image_id" in entry:
                    vg_id = int(entry["id"] if "id" in entry else entry["image_id"])
                else:  # an image without regions has nothing to say which it is, and nothing to add
                    vg_id = int(regions[0]["image_id"]) if regions else -1
                if vg_id not in sizes:
                    continue
                rows = out.setdefault(vg_id, [])
                for r in regions:
                    box = (r["x"], r["y"], r["width"], r["height"])
                    if not all(_number(v) for v in box) or not isinstance(r["phrase"], str):
                        raise ValueError(f"x, y, width, height must be numbers and phrase a string: {box}, "
                                         f"{r['phrase']!r}")
                    rows.append((int(r["region_id"] if "region_id" in r else r["id"]), r["phrase"].strip(),
                                 tuple(float(v) for v in box)))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
                raise self.error(f"{path}: entry [{i}] is not {{id, regions: [{{region_id, phrase, x, y, width, "
                                 f"height}}]}} ({type(e).__name__}: {e}): {str(entry)[:160]}") from None
        return out

    def _image_path(self, vg_id: int) -> Path | None:
        for folder in IMAGE_DIRS:
            path = self.root / folder / f"{vg_id}.jpg"
            if path.is_file():
                return path
        return None

    def manifest(self) -> Manifest:
        self.prepare()
        image_data = self.require("image_data.json", "image metadata")
        descriptions = self.require("region_descriptions.json", "region descriptions")
        if not any((self.root / d).is_dir() for d in IMAGE_DIRS):
            raise self.error(f"no image folder: looked for {' and '.join(str(self.root / d) for d in IMAGE_DIRS)}")
        wanted = self._coco_ids()
        sizes = self._images(image_data, wanted)
        if not sizes:
            which = f"an image of {self.config.coco_ids}" if wanted is not None else "any COCO image"
            raise self.error(f"no image in {image_data} has a coco_id that is {which}")
        regions = self._regions(descriptions, sizes)
        clips, missing, missing_phrases, empty = [], [], 0, 0
        for vg_id, size in sizes.items():
            rows = regions.get(vg_id, [])
            path = self._image_path(vg_id)
            if path is None:
                missing.append(vg_id)
                missing_phrases += len(rows)
                continue
            for region_id, phrase, box in rows:
                if not phrase:
                    empty += 1
                    continue
                clips.append(Clip(clip_id=f"{vg_id}/{region_id}", group=str(vg_id), split="test", text=(phrase,),
                                  box=box, image_size=size, media={"image": path.absolute()}))
        if len(missing) == len(sizes):
            raise self.error(f"none of the {len(sizes)} selected images is on disk (first: "
                             f"{self.root / IMAGE_DIRS[0] / f'{missing[0]}.jpg'})")
        if missing:
            log.warning("dataset '%s': %d of %d images are missing under %s; their %d region phrases are left out "
                        "(first: %s.jpg)", self.dataset_name, len(missing), len(sizes),
                        " / ".join(IMAGE_DIRS), missing_phrases, missing[0])
        if empty:
            log.info("dataset '%s': %d empty region phrases left out", self.dataset_name, empty)
        if not clips:
            raise self.error(f"{descriptions} describes no region of the selected images")
        return Manifest(self.dataset_name, self.root, clips)
