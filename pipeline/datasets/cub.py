"""`cub`: CUB-200-2011 birds with Reed et al.'s 10 captions per image; a 100 / 50 / 50 class split."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, Manifest


@dataclass
class CubConfig:
    images_dir: str = "CUB_200_2011"
    text_dir: str = "cvpr2016_cub"
    skip_missing: bool = False
    per_caption: bool = False  # true: one item per caption, grouped by image (caption trainers: see-hear-read)


def _class_number(name: str) -> int | None:
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else None


@register_dataset
class CubDataset(DatasetAdapter):
    """CUB-200-2011 images, each with its 10 text captions; classes split 100 train / 50 val / 50 test
    (`per_caption: true`: one item per caption, grouped by its image)."""

    name = "cub"
    Config = CubConfig
    published = ("Wah et al. 2011: www.vision.caltech.edu/datasets/cub_200_2011; captions: Reed et al., CVPR 2016 "
                 "(github.com/reedscot/cvpr2016, cvpr2016_cub.tar.gz)")
    layout = ("ROOT/CUB_200_2011/images.txt (<id> <class>/<file>.jpg), image_class_labels.txt (<id> <class id>),\n"
              "  classes.txt (<class id> <NNN.Name>), images/<class>/<file>.jpg\n"
              "ROOT/cvpr2016_cub/text_c10/<class>/<file>.txt   10 captions, one per line\n"
              "ROOT/cvpr2016_cub/{train,val,test}classes.txt   Reed's split (optional; without them classes\n"
              "  1-100 train, 101-150 val, 151-200 test); classes matched by their number")

    def _table(self, path: Path) -> list[tuple[str, str]]:
        rows = []
        for n, line in enumerate(self.read_lines(path), 1):
            key, _, value = line.partition(" ")
            if not value:
                raise self.error(f"{path} line {n} is not '<id> <value>': {line!r}")
            rows.append((key, value.strip()))
        return rows

    def _class_split(self, text: Path) -> dict[int, str]:
        files = {s: text / f"{s}classes.txt" for s in ("train", "val", "test")}
        if not any(p.is_file() for p in files.values()):
            return {k: "train" if k <= 100 else "val" if k <= 150 else "test" for k in range(1, 201)}
        split = {}
        for s, p in files.items():
            for name in self.read_lines(self.require(p.name, f"{s} classes", base=text)):
                k = _class_number(name)
                if k is None:
                    raise self.error(f"{p}: class '{name}' does not start with its number (NNN.Name)")
                split[k] = s
        return split

    def manifest(self) -> Manifest:
        self.prepare()
        cub = self.require(self.config.images_dir, "CUB-200-2011", directory=True)
        text = self.require(self.config.text_dir, "Reed captions", directory=True)
        captions_dir = self.require("text_c10", "captions", directory=True, base=text)
        images_dir = self.require("images", "images", directory=True, base=cub)
        classes = dict(self._table(self.require("classes.txt", "class list", base=cub)))
        label_of = dict(self._table(self.require("image_class_labels.txt", "image labels", base=cub)))
        split_of = self._class_split(text)
        clips, no_text = [], []
        for image_id, rel in self._table(self.require("images.txt", "image list", base=cub)):
            cls = classes.get(label_of.get(image_id, ""))
            if cls is None:
                raise self.error(f"image {image_id} ({rel}) has no class in image_class_labels.txt / classes.txt")
            what = f"images.txt entry {image_id}"
            caption_file = self.under(str(Path(rel).with_suffix(".txt")), what, captions_dir)
            if not caption_file.is_file():
                no_text.append(caption_file)
                continue
            clip = Clip(clip_id=Path(rel).with_suffix("").as_posix(), label=cls, split=split_of.get(_class_number(cls) or -1),
                        text=tuple(self.read_lines(caption_file)), media={"image": self.under(rel, what, images_dir)})
            if self.config.per_caption:  # the image's rows are computed once: its items share the picture
                clips += [dataclasses.replace(clip, clip_id=f"{clip.clip_id}/{k}", group=clip.clip_id, text=(t,))
                          for k, t in enumerate(clip.text)]
            else:
                clips.append(clip)
        if no_text and not self.config.skip_missing:
            raise self.error(f"{len(no_text)} caption file(s) missing, e.g. {no_text[0]}; restore them or set "
                             "`skip_missing: true`")
        clips = self.check_media(clips, self.config.skip_missing)
        order = sorted(set(classes.values()), key=lambda c: (_class_number(c) or 0, c))
        return Manifest(self.dataset_name, self.root, clips, [c for c in order if any(x.label == c for x in clips)])
