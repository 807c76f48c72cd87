"""`zero-shot-image-text` and `zero-shot-sound-text`: a pretrained model's own joint space, learned by nobody here.

Each modality was embedded by its own tower in an extract stage (`clip-frames` and `clip-text`, `clap-audio` and
`clap-text`); this "trainer" fits nothing and hands each item's vector (the mean of its rows: a video's frames, a long
sound's windows) on, L2-normalised, so that the run is scored by the same task, saved in the same run directory and
listed in `pipeline report` beside the methods that learn:
- image-text: the `pairs` task (captions grouped by image): Recall@K image <-> text, as CLIP is evaluated;
- sound-text: the `modalities` task: each item's sound against its own text and back (R@K, median rank).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from models.common.base import Trainer
from models.common.items import Items, View
from pipeline.registry import register_trainer


@dataclass
class ZeroShotConfig:
    """Identity params: only how the test split is scored (nothing is trained)."""

    eval_folds: int = 1  # 5: COCO's 5 x 1000-image protocol (a 5000-image test split)

    def __post_init__(self) -> None:
        if self.eval_folds < 1:
            raise ValueError(f"eval_folds must be >= 1, got {self.eval_folds}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class ZeroShot(Trainer):
    """A pretrained joint space: two views of the same space's towers, passed through normalised."""

    VERSION = 1
    Config = ZeroShotConfig
    sides: ClassVar[tuple[View, View]]

    def views(self) -> list[View]:
        return list(self.sides)

    def fit(self, train: Items, val: Items | None = None, **hooks: Any) -> "ZeroShot":
        dims = {v.name: np.asarray(train.data[v.name]).shape[-1] for v in self.sides}
        if len(set(dims.values())) != 1:
            a, b = self.sides
            raise ValueError(f"{self.name}: view '{a.name}' has {dims[a.name]} dims and '{b.name}' {dims[b.name]}; a "
                             "zero-shot space needs both towers of one model (e.g. clip-frames with clip-text)")
        return self

    def embed(self, items: Items) -> dict[str, np.ndarray]:
        return {v.name: self.view_embeddings(v.name, items.data[v.name]) for v in self.sides}

    def view_embeddings(self, view: str, data: Any) -> np.ndarray:
        """One view's rows alone, normalised: a query's (`pipeline embed`, `pipeline serve`), as `embed` does."""
        return l2_normalize(data)

    def group_outputs(self) -> frozenset[str]:
        return frozenset(v.name for v in self.sides if v.per == "group")

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing learned: the towers' weights are the extract stages' (their digests key this run)

    def load_state_dict(self, state: dict[str, Any]) -> "ZeroShot":
        return self

    def describe(self) -> dict[str, Any]:
        return {"learned": "nothing: the pretrained towers' own joint space"}


@register_trainer
class ZeroShotImageText(ZeroShot):
    """An image-text space (CLIP): an image per group of captions, a text per caption; Recall@K both ways."""

    name = "zero-shot-image-text"
    tasks = ("pairs",)
    sides = (View("image", "visual", per="group", dtype="float32"), View("text", "text", dtype="float32"))


@register_trainer
class ZeroShotSoundText(ZeroShot):
    """An audio-text space (CLAP): each item's sound and its own text; retrieval both ways."""

    name = "zero-shot-sound-text"
    tasks = ("modalities",)
    sides = (View("sound", "audio", dtype="float32"), View("text", "text", dtype="float32"))
