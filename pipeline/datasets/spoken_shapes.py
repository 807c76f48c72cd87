"""`spoken_shapes`: a generated spoken-caption corpus shaped like Flickr8k audio, for demos and tests.

Each image is a coloured shape on a coloured background (a distinct (shape, colour, background)
per image, jittered in place and size); each has `captions_per_image` spoken captions that name
what is in it ("a red circle on a blue background", "there is a red circle in the picture", ...),
spoken by espeak-ng with a different voice, speed and pitch per caption. Clips are grouped by
image and carry their transcript; images are split into train / val / test.
"""
from __future__ import annotations

import csv
import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..registry import register_dataset
from .base import MARKER, Clip, DatasetError, GeneratedDataset, Manifest

log = logging.getLogger(__name__)

SHAPES = ["circle", "square", "triangle", "cross"]
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 60, 220), "yellow": (240, 220, 40),
           "white": (245, 245, 245), "black": (15, 15, 15), "orange": (250, 140, 20), "purple": (140, 40, 170)}
TEMPLATES = ["a {c} {s} on a {b} background", "there is a {c} {s} in the picture", "a picture of a {c} {s}",
             "the {s} is {c} and the background is {b}", "i can see a {c} {s} on {b}"]
VOICES = ["en-us", "en", "en+f3", "en-us+m3", "en+f4", "en+m7", "en-us+f2"]


@dataclass
class SpokenShapesConfig:
    n_images: int = 60
    captions_per_image: int = 5
    n_val: int = 10  # images in the val split
    n_test: int = 10  # images in the test split
    size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        combos = len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1)
        checks = [(2 <= self.n_images <= combos, f"n_images must be in 2..{combos} (distinct pictures)"),
                  (1 <= self.captions_per_image <= len(TEMPLATES), f"captions_per_image must be in 1..{len(TEMPLATES)}"),
                  (self.n_val >= 1 and self.n_test >= 1 and self.n_val + self.n_test < self.n_images,
                   "n_val and n_test must be >= 1 and leave training images"),
                  (self.size >= 32, "size must be >= 32")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{msg} (got {asdict(self)})")


def _draw(path: Path, shape: str, colour: str, background: str, size: int, rng: np.random.Generator) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), COLOURS[background])
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.22, 0.34)
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12) * size, size / 2 + rng.uniform(-0.12, 0.12) * size
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = r / 3
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    img.save(path, format="PNG")


def _speak(path: Path, text: str, voice: str, speed: int, pitch: int) -> None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DatasetError("espeak-ng not found on PATH; install Debian's espeak-ng (apt-get install espeak-ng) "
                           "or run `bash .ci/setup`")
    cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), "--", text]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not path.is_file() or path.stat().st_size < 1000:
        raise DatasetError(f"espeak-ng could not speak {text!r} with voice {voice}: {done.stderr.strip()[-300:]}")


@register_dataset
class SpokenShapesDataset(GeneratedDataset):
    """Generates its images and spoken captions on first use under `root` (atomically)."""

    name = "spoken_shapes"
    Config = SpokenShapesConfig
    layout = (f"ROOT/{MARKER} (the generator's params), ROOT/captions.csv "
              "(clip_id,image,wav,split,text),\nROOT/images/<image>.png, ROOT/wavs/<image>_<k>.wav; "
              "written by the generator (needs espeak-ng), not by hand")

    def _write(self, tmp: Path) -> None:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        colours = list(COLOURS)
        combos = [(s, c, b) for s in SHAPES for c in colours for b in colours if b != c]
        picked = [combos[i] for i in rng.choice(len(combos), cfg.n_images, replace=False)]
        order = rng.permutation(cfg.n_images)
        split = {int(i): "val" for i in order[:cfg.n_val]}
        split.update({int(i): "test" for i in order[cfg.n_val:cfg.n_val + cfg.n_test]})
        (tmp / "images").mkdir()
        (tmp / "wavs").mkdir()
        rows, speech = [], []
        for i, (shape, colour, bg) in enumerate(picked):
            image = f"img{i:04d}"
            _draw(tmp / "images" / f"{image}.png", shape, colour, bg, cfg.size, np.random.default_rng([cfg.seed, i]))
            for k in range(cfg.captions_per_image):
                text = TEMPLATES[k].format(s=shape, c=colour, b=bg)
                r = np.random.default_rng([cfg.seed, i, k])
                wav = f"{image}_{k}.wav"
                speech.append((tmp / "wavs" / wav, text, VOICES[int(r.integers(len(VOICES)))],
                               int(r.integers(130, 190)), int(r.integers(30, 70))))
                rows.append([f"{image}_{k}", f"images/{image}.png", f"wavs/{wav}", split.get(i, "train"), text])
        log.info("generating %d spoken captions of %d images under %s", len(rows), cfg.n_images, self.root)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda job: _speak(*job), speech))
        with open(tmp / "captions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["clip_id", "image", "wav", "split", "text"])
            w.writerows(rows)

    def manifest(self) -> Manifest:
        clips = []
        with open(self.generated("captions.csv"), newline="") as f:
            for row in csv.DictReader(f):
                clips.append(Clip(clip_id=row["clip_id"], group=Path(row["image"]).stem, split=row["split"],
                                  text=(row["text"],), media={"audio": (self.root / row["wav"]).absolute(),
                                                             "image": (self.root / row["image"]).absolute()}))
        return Manifest(self.dataset_name, self.root, clips)
