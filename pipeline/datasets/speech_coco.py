"""`speech_coco`: SPEECH-COCO (Havard et al., 2017): synthesised spoken MSCOCO captions with word
timestamps; one clip per spoken caption, grouped by image."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, Manifest


@dataclass
class SpeechCocoConfig:
    splits: list[str] | None = None  # default: train2014 and val2014 (those present)
    image_root: str = "images"  # MSCOCO: <image_root>/<split>/COCO_<split>_<12-digit id>.jpg
    instances: str = "annotations/instances_{split}.json"  # COCO object annotations, where present (alignment)
    skip_missing: bool = False


def word_times(timecode: list, duration: float) -> tuple[tuple[str, float, float], ...]:
    """(word, start s, end s) from SPEECH-COCO's timecode [[ms, TYPE, value], ...]: a word ends where the
    next word or pause (SEPR) starts, the last one at the end of the file."""
    marks = [(float(t[0]) / 1000.0, t[1], t[2]) for t in timecode if len(t) >= 3 and t[1] in ("WORD", "SEPR")]
    out = []
    for i, (t, kind, value) in enumerate(marks):
        if kind == "WORD":
            end = marks[i + 1][0] if i + 1 < len(marks) else duration
            out.append((str(value), t, max(t, end)))
    return tuple(out)


@register_dataset
class SpeechCocoDataset(DatasetAdapter):
    """SPEECH-COCO: <split>/wav/*.wav + <split>/json/*.json (caption, speaker, word timecodes) + COCO images."""

    name = "speech_coco"
    Config = SpeechCocoConfig
    published = ("Havard et al. 2017: github.com/William-N-Havard/SpeechCoco (SPEECH-COCO); images: cocodataset.org "
                 "(train2014, val2014)")
    layout = ("ROOT/<split>/wav/<imgID>_<captionID>_<speaker>_<disfluency>_<speed>.wav  (split: train2014, val2014;\n"
              "  a doubled ROOT/val2014/val2014/ is accepted)\n"
              "ROOT/<split>/json/<same name>.json: {imgID, captionID, speaker, synthesisedCaption, duration,\n"
              "  timecode: [[ms, WORD|SYL|SEPR|PHO, value], ...]}\n"
              "ROOT/images/<split>/COCO_<split>_<12-digit imgID>.jpg  (param `image_root`)\n"
              "ROOT/annotations/instances_<split>.json: COCO object annotations (optional; param `instances`)")

    def _split_dir(self, split: str) -> Path | None:
        for cand in (self.root / split / split, self.root / split):
            if (cand / "json").is_dir():
                return cand
        return None

    def manifest(self) -> Manifest:
        self.prepare()
        wanted = self.config.splits or ["train2014", "val2014"]
        dirs = {s: self._split_dir(s) for s in wanted}
        if self.config.splits and any(d is None for d in dirs.values()):
            bad = next(s for s, d in dirs.items() if d is None)
            raise self.error(f"missing folder {self.root / bad / 'json'}")
        if all(d is None for d in dirs.values()):
            raise self.error(f"none of {', '.join(str(self.root / s / 'json') for s in wanted)} exists")
        image_root = Path(self.config.image_root)
        image_root = image_root if image_root.is_absolute() else self.root / image_root
        clips = []
        for split, base in dirs.items():
            if base is None:
                continue
            wav_dir = self.require("wav", f"{split} audio", directory=True, base=base)
            for path in sorted((base / "json").glob("*.json")):
                doc = self.read_json(path)
                try:
                    img = int(doc["imgID"])
                    caption = str(doc["synthesisedCaption"])
                    words = word_times(doc.get("timecode") or [], float(doc.get("duration") or 0.0))
                except (KeyError, TypeError, ValueError, IndexError) as e:
                    raise self.error(f"{path}: expected imgID, synthesisedCaption and timecode [[ms, TYPE, value]] "
                                     f"({type(e).__name__}: {e})") from None
                wav_name = str(doc.get("wavFilename") or f"{path.stem}.wav")
                what = f"{path.name}"
                clips.append(Clip(
                    clip_id=f"{split}/{path.stem}", split=split.removesuffix("2014"), group=str(img),
                    text=(caption,), words=words,
                    media={"audio": self.under(wav_name, what, wav_dir),
                           "image": self.under(f"{split}/COCO_{split}_{img:012d}.jpg", what, image_root)}))
        if not clips:
            raise self.error("no caption json files found")
        clips = self.check_media(clips, self.config.skip_missing)
        return Manifest(self.dataset_name, self.root, clips,
                        annotations=instances_files(self, [s for s, d in dirs.items() if d is not None]))


def instances_files(adapter: DatasetAdapter, splits: list[str]) -> dict[str, Path]:
    """Split name (train, val) -> its COCO instances json, for the splits that have one."""
    out = {}
    for split in splits:
        rel = adapter.config.instances.format(split=split)
        path = Path(rel) if Path(rel).is_absolute() else adapter.root / rel
        if path.is_file():
            out[split.removesuffix("2014")] = path.absolute()
    return out
