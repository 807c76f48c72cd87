"""`ave`: the Audio-Visual Event dataset (Tian et al., ECCV 2018): 28 event classes, one clip per
annotated segment, cut to its start/end; the paper's train/val/test split plus 5 class-balanced folds."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, Manifest, class_balanced_folds

log = logging.getLogger(__name__)

AVE_CLASSES = [
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
    "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)", "Truck",
    "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus",
    "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin"]
_HEADER = "category&videoid&quality&starttime&endtime"
_SPLITS = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


@dataclass
class AveConfig:
    video_dir: str = "AVE"
    n_folds: int = 5
    seed: int = 0
    skip_missing: bool = False

    def __post_init__(self) -> None:
        if self.n_folds < 1:
            raise ValueError(f"n_folds must be >= 1, got {self.n_folds}")


Row = tuple[str, str, float, float]  # category, video id, start s, end s


@register_dataset
class AveDataset(DatasetAdapter):
    """AVE: Annotations.txt rows (category&video&quality&start&end) as clips cut to [start, end)."""

    name = "ave"
    Config = AveConfig
    published = "Tian et al., ECCV 2018: github.com/YapengTian/AVE-ECCV18 (AVE_Dataset.zip, Google Drive)"
    layout = ("ROOT/Annotations.txt   Category&VideoID&Quality&StartTime&EndTime per line (header optional)\n"
              "ROOT/trainSet.txt, valSet.txt, testSet.txt   the same rows, split as in the paper\n"
              "ROOT/AVE/<VideoID>.mp4")

    def _rows(self, path: Path) -> list[Row]:
        rows = []
        for n, line in enumerate(self.read_lines(path), 1):
            if n == 1 and line.lower().replace(" ", "") == _HEADER:
                continue
            parts = line.split("&")
            try:
                if len(parts) != 5:
                    raise ValueError(f"{len(parts)} fields")
                start, end = float(parts[3]), float(parts[4])
                if not (math.isfinite(start) and math.isfinite(end) and 0 <= start <= end):
                    raise ValueError(f"times must satisfy 0 <= start <= end, got {start}, {end}")
                rows.append((parts[0].strip(), parts[1].strip(), start, end))
            except ValueError as e:
                raise self.error(f"{path} line {n} is not Category&VideoID&Quality&Start&End ({e}): {line!r}") from None
        return rows

    def manifest(self) -> Manifest:
        self.prepare()
        cfg = self.config
        rows = self._rows(self.require("Annotations.txt", "annotation"))
        videos = self.require(cfg.video_dir, "video", directory=True)
        split_of: dict[Row, str] = {}
        for split, fname in _SPLITS.items():
            for r in self._rows(self.require(fname, f"{split} split")):
                split_of.setdefault(r, split)
        clips, empty, seen = [], 0, {}
        for cat, vid, start, end in rows:
            if end <= start:
                empty += 1
                continue
            seen[vid] = seen.get(vid, 0) + 1  # a video with two events gives two clips
            clip_id = vid if seen[vid] == 1 else f"{vid}#{seen[vid]}"
            clips.append(Clip(clip_id=clip_id, label=cat, start=start, end=end,
                              split=split_of.get((cat, vid, start, end)),
                              media={"video": self.under(f"{vid}.mp4", f"video id '{vid}'", videos).absolute()}))
        if empty:
            log.warning("dataset '%s': %d annotation row(s) with end <= start left out", self.dataset_name, empty)
        if not clips:
            raise self.error("Annotations.txt holds no segments")
        clips = self.check_media(clips, cfg.skip_missing)
        classes = [c for c in AVE_CLASSES if any(x.label == c for x in clips)]
        classes += sorted({x.label for x in clips} - set(AVE_CLASSES))
        folds = class_balanced_folds([c.clip_id for c in clips], [c.label for c in clips], cfg.n_folds, cfg.seed)
        clips = [dataclasses.replace(c, fold=f) for c, f in zip(clips, folds)]
        return Manifest(self.dataset_name, self.root, clips, classes)
