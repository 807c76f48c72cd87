"""`spoken_scenes`: generated scenes of 2-3 shapes with spoken captions that name them, known word timings and
object masks, written in the layouts of SPEECH-COCO, SpokenCOCO, COCO instances, Karpathy's COCO captions and
Visual Genome so that the real adapters read them: the VGS alignment and DSVE-loc demos and tests, where the
right answer is known.

Each image (224 x 224 JPEG) holds 2-3 distinct shapes (circle, square, triangle, cross) of different
colours in distinct cells of a 3 x 3 layout, jittered. Each caption names every shape ("a red circle and
a blue square"), in a shuffled order; it is spoken by espeak-ng one word at a time (each word once per
voice and speed, then reused) and concatenated with short pauses, so every word's onset is exact. Masks
are COCO instance annotations: squares, triangles and crosses as polygons, circles as RLE.

Written under ROOT:
- images/<split>/COCO_<split>_<12-digit id>.jpg (split: train2014, val2014; ids distinct across splits)
- <split>/wav/<id>_<caption id>_<voice>_0_<speed>.wav and <split>/json/<same>.json (SPEECH-COCO: caption,
  duration, timecode [[ms, WORD|SEPR, value], ...])
- SpokenCOCO_train.json, SpokenCOCO_val.json ({data: [{image, captions: [{wav, text, speaker, uttid}]}]},
  naming the same wavs)
- annotations/instances_<split>.json (categories: the four shapes)
- dataset_coco.json (Karpathy's layout: the same captions, written; train2014 images -> "train", val2014 -> "val";
  sentid = the SPEECH-COCO captionID)
- image_data.json, region_descriptions.json, VG_100K/<VG id>.jpg (Visual Genome: VG id = 1_000_000 + COCO id,
  coco_id = the COCO id; one region per shape, phrased "the red circle" or "a blue square", its box the
  shape's COCO bbox rounded outwards to whole pixels and clipped to the image; the JPEGs are hard links)

`layout` picks the adapter that reads the set: `speech_coco` (word timings: the alignment corpus),
`spokencoco` (the training corpus's layout), `coco_captions` (written captions) or `visual_genome` (region
phrases with boxes, of the val2014 scenes, as DSVE-loc's pointing game keeps COCO val2014 images).
`speech: false` writes no audio (no SPEECH-COCO or SpokenCOCO files; espeak-ng is not needed): the two text
layouts only. The scenes and captions are the same either way.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..cache import key_params
from ..registry import register_dataset
from .base import MARKER, DatasetError, GeneratedDataset, Manifest

log = logging.getLogger(__name__)

SHAPES = ["circle", "square", "triangle", "cross"]
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 60, 220), "yellow": (240, 220, 40),
           "black": (15, 15, 15), "orange": (250, 140, 20), "purple": (140, 40, 170), "white": (250, 250, 250)}
BACKGROUNDS = [(150, 150, 150), (170, 160, 140), (130, 150, 170), (160, 175, 150)]
TEMPLATES = [("a {c} {s}", " and "), ("there is a {s}", " next to "), ("i see a {c} {s}", " with ")]
VOICES = ["en-us", "en", "en+f3", "en-us+m3"]
SPEEDS = [185, 215]
RATE = 22050  # espeak-ng's output rate
LAYOUTS = ("speech_coco", "spokencoco", "coco_captions", "visual_genome")
SPEECH_LAYOUTS = ("speech_coco", "spokencoco")
VG_OFFSET = 1_000_000  # Visual Genome image id = VG_OFFSET + COCO id


@dataclass
class SpokenScenesConfig:
    n_train: int = 160  # images in train2014
    n_val: int = 40  # images in val2014
    captions_per_image: int = 2
    size: int = 224
    seed: int = 0
    palette: Literal["free", "per_shape"] = "free"  # per_shape: each shape always in its own colour (an easier set)
    layout: Literal["speech_coco", "spokencoco", "coco_captions", "visual_genome"] = "speech_coco"
    speech: bool = True  # false: no spoken captions (no espeak-ng; fast): layouts coco_captions and visual_genome only

    # params added after sets were generated, at the value that writes what those sets hold: left out of the marker
    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {"speech": True}

    def __post_init__(self) -> None:
        checks = [(self.n_train >= 2 and self.n_val >= 2, "n_train and n_val must be >= 2"),
                  (1 <= self.captions_per_image <= len(TEMPLATES), f"captions_per_image must be in 1..{len(TEMPLATES)}"),
                  (self.size >= 64, "size must be >= 64"),
                  (self.layout in LAYOUTS, f"layout must be one of {', '.join(LAYOUTS)}"),
                  (self.speech or self.layout not in SPEECH_LAYOUTS,
                   f"layout {self.layout} reads spoken captions, but speech is false; set speech: true (needs "
                   "espeak-ng) or read the set with layout coco_captions or visual_genome")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{msg} (got {asdict(self)})")


def _scene(rng: np.random.Generator, size: int, palette: str = "free") -> tuple[tuple[int, int, int], list[dict[str, Any]]]:
    """A background colour and 2-3 shapes: kind, colour, centre, radius, in distinct cells of a 3 x 3 layout."""
    n = int(rng.integers(2, 4))
    kinds = rng.choice(len(SHAPES), n, replace=False)
    colours = rng.choice(len(COLOURS), n, replace=False)
    if palette == "per_shape":
        colours = kinds
    cells = rng.choice(9, n, replace=False)
    cell = size / 3
    shapes = []
    for k, c, pos in zip(kinds, colours, cells):
        r = cell * rng.uniform(0.3, 0.45)
        cx = (pos % 3 + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        cy = (pos // 3 + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        shapes.append({"shape": SHAPES[int(k)], "colour": list(COLOURS)[int(c)], "cx": cx, "cy": cy, "r": r})
    return BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], shapes


def _polygon(s: dict[str, Any]) -> list[tuple[float, float]]:
    cx, cy, r = s["cx"], s["cy"], s["r"]
    if s["shape"] == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if s["shape"] == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    w = r / 3  # cross: twelve corners
    return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx + w, cy + w),
            (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w)]


def _draw(path: Path, background: tuple[int, int, int], shapes: list[dict[str, Any]], size: int,
          image_id: int, next_ann: int) -> list[dict[str, Any]]:
    """Write the picture (JPEG) and return its COCO annotations (polygons; RLE for circles)."""
    from PIL import Image, ImageDraw
    from pycocotools import mask as mask_utils

    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    anns = []
    for k, s in enumerate(shapes):
        fill = COLOURS[s["colour"]]
        ann: dict[str, Any] = {"id": next_ann + k, "image_id": image_id, "category_id": SHAPES.index(s["shape"]) + 1,
                               "iscrowd": 0}
        if s["shape"] == "circle":
            box = [s["cx"] - s["r"], s["cy"] - s["r"], s["cx"] + s["r"], s["cy"] + s["r"]]
            d.ellipse(box, fill=fill)
            m = Image.new("L", (size, size), 0)
            ImageDraw.Draw(m).ellipse(box, fill=1)
            rle = mask_utils.encode(np.asfortranarray(np.array(m, dtype=np.uint8)))
            ann["area"] = float(mask_utils.area(rle))
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
            rle["counts"] = rle["counts"].decode("ascii")
            ann["segmentation"] = rle
        else:
            poly = _polygon(s)
            d.polygon(poly, fill=fill)
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            ann["segmentation"] = [[round(v, 2) for p in poly for v in p]]
            ann["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            ann["area"] = float(0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))))
        anns.append(ann)
    img.save(path, format="JPEG", quality=95)
    return anns


class _Voice:
    """Words spoken by espeak-ng, each (word, voice, speed) once, trimmed of silence."""

    def __init__(self, tmp: Path) -> None:
        self.exe = shutil.which("espeak-ng")
        if self.exe is None:
            raise DatasetError("espeak-ng not found on PATH; install Debian's espeak-ng (apt-get install espeak-ng) "
                               "or run `bash .ci/setup`")
        self.tmp = tmp
        self.cache: dict[tuple[str, str, int], np.ndarray] = {}

    def word(self, word: str, voice: str, speed: int) -> np.ndarray:
        key = (word, voice, speed)
        if key not in self.cache:
            path = self.tmp / f"w{len(self.cache)}.wav"
            cmd = [self.exe, "-v", voice, "-s", str(speed), "-w", str(path), "--", word]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if done.returncode != 0 or not path.is_file():
                raise DatasetError(f"espeak-ng could not speak {word!r} with voice {voice}: {done.stderr.strip()[-300:]}")
            with wave.open(str(path)) as w:
                x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
            loud = np.flatnonzero(np.abs(x.astype(np.int32)) > 300)
            self.cache[key] = x[loud[0]:loud[-1] + 1] if len(loud) else x
        return self.cache[key]


def _pauses(rng: np.random.Generator, n_words: int) -> tuple[float, list[float]]:
    """The silence (s) before a caption and after each of its words: drawn whether or not the caption is spoken,
    so that `speech: false` writes the same scenes and captions as a spoken set of the same seed."""
    lead = float(rng.uniform(0.1, 0.25))
    return lead, [float(rng.uniform(0.05, 0.12)) for _ in range(n_words)]


def _utterance(voice: _Voice, words: list[str], speaker: str, speed: int,
               pauses: tuple[float, list[float]]) -> tuple[np.ndarray, list[list[Any]]]:
    """The caption's samples and its SPEECH-COCO timecode: each word's onset (ms), a pause (SEPR) after it."""
    lead, gaps = pauses
    parts = [np.zeros(int(RATE * lead), np.int16)]
    timecode: list[list[Any]] = []
    at = len(parts[0])
    for w, pause in zip(words, gaps):
        x = voice.word(w, speaker, speed)
        timecode.append([int(round(at * 1000 / RATE)), "WORD", w])
        at += len(x)
        gap = np.zeros(int(RATE * pause), np.int16)
        timecode.append([int(round(at * 1000 / RATE)), "SEPR", " "])
        parts += [x, gap]
        at += len(gap)
    parts.append(np.zeros(int(RATE * 0.1), np.int16))
    return np.concatenate(parts), timecode


def _write_wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(x.astype("<i2").tobytes())


def _region_box(bbox: list[float], size: int) -> list[int]:
    """A COCO bbox [x, y, w, h] (floats) as Visual Genome's whole-pixel box: rounded outwards, clipped to the image."""
    x0, y0 = max(0, math.floor(bbox[0])), max(0, math.floor(bbox[1]))
    x1, y1 = min(size, math.ceil(bbox[0] + bbox[2])), min(size, math.ceil(bbox[1] + bbox[3]))
    return [x0, y0, x1 - x0, y1 - y0]


def _link(src: Path, dst: Path) -> None:
    """`dst` as a hard link of `src` (a copy where the file system has none)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@register_dataset
class SpokenScenesDataset(GeneratedDataset):
    """Generates its scenes, spoken captions and annotations on first use under `root` (atomically)."""

    name = "spoken_scenes"
    Config = SpokenScenesConfig
    layout = (f"ROOT/{MARKER} (the generator's params), SPEECH-COCO's train2014/ and val2014/ (wav/, json/), "
              "SpokenCOCO_{train,val}.json,\nimages/<split>/COCO_<split>_<id>.jpg, annotations/instances_<split>.json, "
              "dataset_coco.json,\nimage_data.json, region_descriptions.json, VG_100K/<id>.jpg; "
              "written by the generator (espeak-ng speaks the captions unless `speech: false`), not by hand")

    # the file each layout reads first: its absence says the set predates that layout (or was damaged)
    _FIRST = {"speech_coco": "val2014/json", "spokencoco": "SpokenCOCO_val.json", "coco_captions": "dataset_coco.json",
              "visual_genome": "region_descriptions.json"}

    def generation_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every param but `layout`, which only says how the files are read (every layout shares one root), and
        `speech` at its default (sets generated before it existed were spoken: their markers still match)."""
        return key_params(self.Config, {k: v for k, v in params.items() if k != "layout"})

    def _write(self, tmp: Path) -> None:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        log.info("generating %d scenes with %d %s captions each under %s", cfg.n_train + cfg.n_val,
                 cfg.captions_per_image, "spoken" if cfg.speech else "written", self.root)
        karpathy: list[dict[str, Any]] = []
        vg_images: list[dict[str, Any]] = []
        vg_regions: list[dict[str, Any]] = []
        (tmp / "VG_100K").mkdir()
        with tempfile.TemporaryDirectory() as words_dir:
            voice = _Voice(Path(words_dir)) if cfg.speech else None
            image_id, ann_id = 0, 1
            for split, n in (("train2014", cfg.n_train), ("val2014", cfg.n_val)):
                subs = [f"images/{split}", "annotations"] + ([f"{split}/wav", f"{split}/json"] if cfg.speech else [])
                for sub in subs:
                    (tmp / sub).mkdir(parents=True, exist_ok=True)
                images, anns, spoken = [], [], []
                for _ in range(n):
                    image_id += 1
                    background, shapes = _scene(rng, cfg.size, cfg.palette)
                    name = f"COCO_{split}_{image_id:012d}.jpg"
                    new = _draw(tmp / "images" / split / name, background, shapes, cfg.size, image_id, ann_id)
                    ann_id += len(new)
                    anns += new
                    images.append({"id": image_id, "width": cfg.size, "height": cfg.size, "file_name": name})
                    captions, sentences = [], []
                    for k in range(cfg.captions_per_image):
                        text = self._caption(shapes, k, rng)
                        speaker = VOICES[int(rng.integers(len(VOICES)))]
                        speed = SPEEDS[int(rng.integers(len(SPEEDS)))]
                        pauses = _pauses(rng, len(text.split()))
                        sentences.append({"raw": text, "tokens": text.split(), "imgid": len(karpathy),
                                          "sentid": image_id * 10 + k})
                        if voice is None:
                            continue
                        samples, timecode = _utterance(voice, text.split(), speaker, speed, pauses)
                        stem = f"{image_id}_{image_id * 10 + k}_{speaker.replace('+', '-')}_0_{speed}"
                        _write_wav(tmp / split / "wav" / f"{stem}.wav", samples)
                        (tmp / split / "json" / f"{stem}.json").write_text(json.dumps({
                            "imgID": image_id, "captionID": image_id * 10 + k, "speaker": speaker,
                            "synthesisedCaption": text, "duration": len(samples) / RATE, "timecode": timecode}))
                        captions.append({"wav": f"{split}/wav/{stem}.wav", "text": text, "speaker": speaker,
                                         "uttid": stem})
                    spoken.append({"image": f"{split}/{name}", "captions": captions})
                    karpathy.append({"filepath": split, "filename": name, "imgid": len(karpathy), "cocoid": image_id,
                                     "split": split.removesuffix("2014"), "sentences": sentences,
                                     "sentids": [x["sentid"] for x in sentences]})
                    vg_id = VG_OFFSET + image_id
                    _link(tmp / "images" / split / name, tmp / "VG_100K" / f"{vg_id}.jpg")
                    vg_images.append({"image_id": vg_id, "coco_id": image_id, "flickr_id": None, "width": cfg.size,
                                      "height": cfg.size, "url": f"VG_100K/{vg_id}.jpg"})
                    vg_regions.append({"id": vg_id, "regions": [self._region(s, a, k, vg_id, cfg.size)
                                                                for k, (s, a) in enumerate(zip(shapes, new))]})
                (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps({
                    "info": {"description": "spoken_scenes (generated)"}, "images": images, "annotations": anns,
                    "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]}))
                if cfg.speech:
                    (tmp / f"SpokenCOCO_{split.removesuffix('2014')}.json").write_text(json.dumps({"data": spoken}))
        (tmp / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": karpathy}))
        (tmp / "image_data.json").write_text(json.dumps(vg_images))
        (tmp / "region_descriptions.json").write_text(json.dumps(vg_regions))

    @staticmethod
    def _region(shape: dict[str, Any], ann: dict[str, Any], k: int, vg_id: int, size: int) -> dict[str, Any]:
        """A Visual Genome region naming one shape: its phrase and its COCO bbox in whole pixels."""
        x, y, w, h = _region_box(ann["bbox"], size)
        phrase = f"{('the', 'a')[k % 2]} {shape['colour']} {shape['shape']}"
        return {"region_id": ann["id"], "image_id": vg_id, "phrase": phrase, "x": x, "y": y, "width": w, "height": h}

    @staticmethod
    def _caption(shapes: list[dict[str, Any]], k: int, rng: np.random.Generator) -> str:
        first, joiner = TEMPLATES[k]
        order = rng.permutation(len(shapes))
        parts = [first.format(c=shapes[order[0]]["colour"], s=shapes[order[0]]["shape"])]
        parts += [f"a {shapes[i]['colour']} {shapes[i]['shape']}" for i in order[1:]]
        return parts[0] + joiner + " and ".join(parts[1:])

    def manifest(self) -> Manifest:
        from .coco_captions import CocoCaptionsConfig, CocoCaptionsDataset
        from .speech_coco import SpeechCocoConfig, SpeechCocoDataset
        from .spokencoco import SpokenCocoConfig, SpokenCocoDataset
        from .visual_genome import VisualGenomeConfig, VisualGenomeDataset

        layout = self.config.layout
        self.generated("annotations/instances_val2014.json")
        if not (self.root / self._FIRST[layout]).exists():
            unspoken = json.loads((self.root / MARKER).read_text()).get("speech", True) is False
            why = ("the set was generated with speech: false (no spoken captions); point `root` at a spoken set"
                   if unspoken and layout in SPEECH_LAYOUTS else
                   f"the set was generated before the generator wrote that layout (or was damaged); delete {self.root} "
                   "to regenerate it")
            raise DatasetError(f"dataset '{self.dataset_name}': {self.root} has no {self._FIRST[layout]}, which the "
                               f"{layout} layout reads: {why}")
        if layout == "spokencoco":
            return SpokenCocoDataset(self.dataset_name, self.root, SpokenCocoConfig()).manifest()
        if layout == "coco_captions":
            return CocoCaptionsDataset(self.dataset_name, self.root, CocoCaptionsConfig()).manifest()
        if layout == "visual_genome":  # DSVE-loc's pointing game: VG images that are COCO val2014 images
            return VisualGenomeDataset(self.dataset_name, self.root,
                                       VisualGenomeConfig(coco_ids="annotations/instances_val2014.json")).manifest()
        return SpeechCocoDataset(self.dataset_name, self.root, SpeechCocoConfig()).manifest()
