"""`synthetic`: K classes of real mp4 clips (H.264 + AAC) generated with ffmpeg's lavfi sources.

Each class has its own picture (test pattern + hue) and its own sound (tone frequency + noise
colour); every clip jitters both, so the task is learnable but not trivial.

`nuisance` > 0 makes the harder variant (`synthetic-hard` in stages.yaml): each clip also draws three
factors that show in both its picture and its sound but say nothing about its class (brightness and
loudness, contrast and noise level, gamma and a slight detuning), so the strongest pair-level
correlations are not the class; and `class_noise` > 0 gives each class its own noise level. Plain CCA,
which maximises pair-level correlation, then spends components on the nuisance; Cluster-CCA (all
within-class pairs) and the triplet network (class labels) see through it.
"""
from __future__ import annotations

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..registry import register_dataset
from .base import MARKER, Clip, DatasetError, GeneratedDataset, Manifest, class_balanced_folds

log = logging.getLogger(__name__)

_PATTERNS = ["testsrc2", "smptebars", "rgbtestsrc", "pal75bars", "yuvtestsrc"]
_NOISES = ["white", "pink", "brown"]


@dataclass
class SyntheticConfig:
    n_classes: int = 4
    clips_per_class: int = 5
    duration: float = 2.0
    size: int = 96
    fps: int = 10
    sample_rate: int = 16000
    n_folds: int = 5
    seed: int = 0
    nuisance: float = 0.0  # strength of the class-free factors shared by a clip's picture and sound (0: none)
    class_noise: float = 0.0  # the noise level grows by this factor from the first class to the last

    def __post_init__(self) -> None:
        checks = [(self.n_classes >= 2, "n_classes must be >= 2"),
                  (self.clips_per_class >= 1, "clips_per_class must be >= 1"),
                  (self.duration > 0, "duration must be > 0"),
                  (self.size >= 16 and self.size % 2 == 0, "size must be an even number >= 16 (H.264 4:2:0)"),
                  (self.fps >= 1, "fps must be >= 1"),
                  (self.sample_rate >= 8000, "sample_rate must be >= 8000"),
                  (self.n_folds >= 1, "n_folds must be >= 1"),
                  (0 <= self.nuisance <= 1, "nuisance must be in [0, 1]"), (self.class_noise >= 0, "class_noise must be >= 0")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{msg} (got {asdict(self)})")


def _clip_spec(k: int, i: int, cfg: SyntheticConfig) -> dict:
    rng = np.random.default_rng([cfg.seed, k, i])
    spec = {
        "pattern": _PATTERNS[k % len(_PATTERNS)],
        "hue": float((k * 360.0 / max(cfg.n_classes, 1) + rng.uniform(-8, 8)) % 360),
        "freq": float(220.0 * 2 ** (k * 4 / 12) * rng.uniform(0.97, 1.03)),
        "noise": _NOISES[k % len(_NOISES)],
        "noise_amp": float(rng.uniform(0.02, 0.08)),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
    }
    if cfg.nuisance or cfg.class_noise:  # drawn after the plain set's numbers, so those stay as they were
        z = rng.uniform(-1, 1, 3) * cfg.nuisance
        spec.update({"brightness": float(0.3 * z[0]), "gain_db": float(9.0 * z[0]),
                     "contrast": float(1.0 + 0.6 * z[1]), "gamma": float(1.0 + 0.6 * z[2])})
        spec["freq"] *= float(1.0 + 0.02 * z[2])
        spec["noise_amp"] *= float((1.0 + 0.9 * z[1]) * (1.0 + cfg.class_noise * k / max(cfg.n_classes - 1, 1)))
    return spec


def _render(path: Path, spec: dict, cfg: SyntheticConfig) -> None:
    import ffmpeg

    d, n = cfg.duration, cfg.sample_rate
    video = (ffmpeg.input(f"{spec['pattern']}=size={cfg.size}x{cfg.size}:rate={cfg.fps}:duration={d}", f="lavfi")
             .filter("hue", h=round(spec["hue"], 3)))
    if "brightness" in spec:
        video = video.filter("eq", brightness=round(spec["brightness"], 4), contrast=round(spec["contrast"], 4),
                             gamma=round(spec["gamma"], 4))
    tone = ffmpeg.input(f"sine=frequency={spec['freq']:.3f}:sample_rate={n}:duration={d}", f="lavfi")
    noise = ffmpeg.input(f"anoisesrc=color={spec['noise']}:amplitude={min(spec['noise_amp'], 1.0):.4f}"
                         f":sample_rate={n}:duration={d}:seed={spec['noise_seed']}", f="lavfi")
    audio = ffmpeg.filter([tone, noise], "amix", inputs=2, duration="shortest", normalize=0)
    if "gain_db" in spec:
        audio = audio.filter("volume", f"{spec['gain_db']:.2f}dB")
    out = (ffmpeg.output(video, audio, "file:" + str(path.absolute()), vcodec="libx264", pix_fmt="yuv420p",
                         preset="ultrafast", acodec="aac", ar=n, movflags="+faststart", t=d)
           .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1").overwrite_output())
    try:
        out.run(capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as e:
        msg = (e.stderr or b"").decode("utf-8", "replace").strip()[-300:]
        raise DatasetError(f"ffmpeg could not generate {path.name}: {msg}") from None


@register_dataset
class SyntheticDataset(GeneratedDataset):
    """Generates its clips on first use under `root` (atomically), then reads them back."""

    name = "synthetic"
    Config = SyntheticConfig
    layout = (f"ROOT/{MARKER} (the generator's params), ROOT/manifest.csv (clip_id,path,label,fold),\n"
              "ROOT/clips/<class>/<clip>.mp4; written by the generator, not by hand")

    def _classes(self) -> list[str]:
        return [f"class{k:02d}" for k in range(self.config.n_classes)]

    def _write(self, tmp: Path) -> None:
        cfg = self.config
        jobs = []
        for k, cls in enumerate(self._classes()):
            (tmp / "clips" / cls).mkdir(parents=True, exist_ok=True)
            for i in range(cfg.clips_per_class):
                jobs.append((f"{cls}/{cls}_{i:03d}", tmp / "clips" / cls / f"{cls}_{i:03d}.mp4", cls,
                             _clip_spec(k, i, cfg)))
        log.info("generating %d synthetic clips under %s", len(jobs), self.root)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda j: _render(j[1], j[3], cfg), jobs))
        folds = class_balanced_folds([j[0] for j in jobs], [j[2] for j in jobs], cfg.n_folds, cfg.seed)
        with open(tmp / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["clip_id", "path", "label", "fold"])
            for (cid, path, cls, _), fold in zip(jobs, folds):
                w.writerow([cid, path.relative_to(tmp).as_posix(), cls, fold])

    def manifest(self) -> Manifest:
        path = self.generated("manifest.csv")
        clips = []
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                clips.append(Clip(clip_id=row["clip_id"], media={"video": (self.root / row["path"]).absolute()},
                                  label=row["label"], fold=int(row["fold"])))
        return Manifest(self.dataset_name, self.root, clips, self._classes())
