"""`vegas`: the VEGAS videos (Zhou et al. 2018, "Visual to Sound"), one folder per class, 5 folds."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ..registry import register_dataset
from .base import Manifest
from .folder import FolderConfig, FolderDataset

VEGAS_CLASSES = ["baby crying", "chainsaw", "dog", "drum", "fireworks", "helicopter", "printer",
                 "rail transport", "snoring", "water flowing"]
_ALIASES = {"baby cry": "baby crying", "baby": "baby crying", "rail": "rail transport", "train": "rail transport",
            "water": "water flowing", "water flow": "water flowing", "snore": "snoring", "drums": "drum",
            "dogs": "dog", "firework": "fireworks"}


def canonical(name: str) -> str:
    """A folder name as a class name: lower case, '_' and '-' as spaces, known short forms expanded."""
    s = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    s = re.sub(r"^\d+\s*\.?\s*", "", s)  # "01_Baby_cry" or "1.dog"
    return _ALIASES.get(s, s)


@dataclass
class VegasConfig(FolderConfig):
    classes: list[str] | None = None  # a subset of the 10 (default: all 10 must be there)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [c for c in self.classes or [] if canonical(c) not in VEGAS_CLASSES]
        if unknown:
            raise ValueError(f"classes {unknown} are not VEGAS classes; they are: {', '.join(VEGAS_CLASSES)}")


@register_dataset
class VegasDataset(FolderDataset):
    """VEGAS raw videos in 10 class folders; class-balanced folds, deterministic given `seed`."""

    name = "vegas"
    Config = VegasConfig
    published = ("Zhou et al., CVPR 2018 (bvision11.cs.unc.edu/bigpen/yipin/visual2sound_webpage); "
                 "videos from AudioSet, 10 classes")
    layout = ("ROOT/<class>/<video>.mp4 (nested folders allowed: <class>/videos/video_00001.mp4)\n"
              "class folders, matched ignoring case, '_' and '-': " + ", ".join(VEGAS_CLASSES))

    def manifest(self) -> Manifest:
        m = super().manifest()
        folders = {c: canonical(c) for c in m.classes}
        wanted = [canonical(c) for c in self.config.classes] if self.config.classes else VEGAS_CLASSES
        strangers = sorted(f for f, c in folders.items() if c not in wanted)
        if strangers:
            raise self.error(f"folder(s) {strangers} are not VEGAS classes"
                             + (" selected by `classes`" if self.config.classes else ""))
        absent = [c for c in wanted if c not in folders.values()]
        if absent:
            raise self.error(f"no folder for class(es) {absent}; to use a subset, list it in the `classes` param")
        twice = sorted(c for c in set(folders.values()) if list(folders.values()).count(c) > 1)
        if twice:
            raise self.error(f"two folders map to class(es) {twice}: {sorted(f for f in folders if folders[f] in twice)}")
        clips = [dataclasses.replace(c, label=folders[c.label]) for c in m.clips]
        return Manifest(self.dataset_name, self.root, clips, [c for c in VEGAS_CLASSES if c in wanted], m.skipped)
