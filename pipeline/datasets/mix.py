"""`mix`: several datasets of the same stages.yaml read as one, for a run that learns from pairs of different kinds
at once (See, Hear, and Read: image-text pairs from a caption corpus, image-sound pairs from a video corpus).

Each part keeps its own layout and adapter. A clip becomes `<part>/<clip id>`; a clip without a group is its own
group (a video: its frame is the image of its sound); a clip without a published split gets one by its group,
seeded (`val_fraction`, `test_fraction`, the rest train); a part with a val split but no test split gives half of
its val groups to test (every part is scored). Feature stages run on the mix like on any dataset: a
clip that lacks what a stage reads (a caption's sound) fails there by name, and a trainer whose views are optional
(`see-hear-read`'s sound and text) takes each item with what it has.
"""
from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..registry import DATASETS, register_dataset
from .base import DatasetAdapter, DatasetError, Manifest

log = logging.getLogger(__name__)


@dataclass
class MixConfig:
    parts: list[str] = field(default_factory=list)  # dataset names of the same stages.yaml
    val_fraction: float = 0.05  # of the groups without a published split
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.parts) < 2 or len(set(self.parts)) != len(self.parts):
            raise ValueError(f"parts must name two or more different datasets, got {self.parts}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must be >= 0 and leave training groups, got "
                             f"{self.val_fraction} and {self.test_fraction}")


@register_dataset
class MixDataset(DatasetAdapter):
    """Several datasets read as one (clip ids prefixed by their dataset); no files of its own."""

    name = "mix"
    Config = MixConfig
    layout = ("no files of its own: the datasets named in `parts` (params), each in its own layout;\n"
              "clips become <part>/<clip id>, ungrouped clips their own group, unsplit groups a seeded split")

    def __init__(self, name: str, root: Any, config: Any) -> None:
        super().__init__(name, root, config)
        self.parts: list[DatasetAdapter] = []

    def bind_config(self, config: Any) -> None:
        """Build the parts' adapters from the pipeline config (the runner calls this after construction)."""
        for p in self.config.parts:
            if p not in config.datasets:
                raise DatasetError(f"dataset '{self.dataset_name}' (mix): part '{p}' is not a dataset of "
                                   f"{config.path.name} (datasets: {', '.join(config.datasets)})")
            if config.datasets[p].adapter == "mix":
                raise DatasetError(f"dataset '{self.dataset_name}' (mix): part '{p}' is itself a mix; name its parts")
        self.parts = []
        for p in self.config.parts:
            spec = config.dataset(p)
            cls = DATASETS.get(spec.adapter)
            self.parts.append(cls(spec.name, spec.root, cls.Config(**spec.params)))
        kinds = {a.kind for a in self.parts}
        if kinds != {"media"}:
            raise DatasetError(f"dataset '{self.dataset_name}' (mix): every part must hold media; "
                               f"{', '.join(a.dataset_name for a in self.parts if a.kind != 'media')} hold(s) features")

    def _require_parts(self) -> None:
        if not self.parts:
            raise DatasetError(f"dataset '{self.dataset_name}' (mix) was built without its config; open it with "
                               "pipeline.runner.make_adapter")

    def prepare(self) -> None:
        self._require_parts()
        for a in self.parts:
            a.prepare()

    def manifest(self) -> Manifest:
        self._require_parts()
        cfg = self.config
        clips, skipped, classes = [], [], []
        for a in self.parts:
            m = a.manifest()
            part = a.dataset_name
            groups = sorted({c.group or c.clip_id for c in m.clips if not c.split})
            salt = zlib.crc32(part.encode())  # a part's split depends on its own clips only, not on the others'
            order = np.random.default_rng([cfg.seed, salt]).permutation(len(groups))
            n_val, n_test = int(round(cfg.val_fraction * len(groups))), int(round(cfg.test_fraction * len(groups)))
            assigned = {groups[int(i)]: "val" if k < n_val else "test" if k < n_val + n_test else "train"
                        for k, i in enumerate(order)}
            splits = {str(c.split).lower() for c in m.clips if c.split}
            if "val" in splits and "test" not in splits:  # every part needs test items: half its val images
                val = sorted({c.group or c.clip_id for c in m.clips if str(c.split).lower() == "val"})
                picked = np.random.default_rng([cfg.seed, salt, 1]).permutation(len(val))[:len(val) // 2]
                assigned.update({val[int(i)]: "test" for i in picked})
                log.info("dataset '%s': part '%s' has no test split; %d of its %d val images test", self.dataset_name,
                         part, len(picked), len(val))
            for c in m.clips:
                group = c.group or c.clip_id
                split = assigned.get(group) if str(c.split).lower() == "val" and group in assigned else c.split
                clips.append(dataclasses.replace(c, clip_id=f"{part}/{c.clip_id}", group=f"{part}/{group}",
                                                 split=split or assigned[group]))
            skipped += [(f"{part}/{p}", why) for p, why in m.skipped]
            classes += [k for k in m.classes if k not in classes]
            log.info("dataset '%s': %d clips of '%s'", self.dataset_name, len(m.clips), part)
        return Manifest(self.dataset_name, self.root, clips, classes, skipped)
