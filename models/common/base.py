"""The trainer contract: identity params in `Config`, an explicit VERSION, the views it reads, the tasks it
supports, `fit(train, val=None)` and `embed(items) -> {modality: array}`.

A trainer never knows where its data comes from. The pipeline's training layer (pipeline/training/)
reads each declared `View` from its upstream store (or the manifest) into `Items`, lets the task pick
the qualifying items and cut them into folds or splits, and hands `fit` only the training items (and
the validation items for model selection); it saves state and embeddings and evaluates. A trainer does
no I/O.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from models.common.items import Items, View


@dataclass
class TrainConfig:
    """Params every clip-vector trainer has: they change results, so they are identity params."""

    protocol: Literal["auto", "folds", "split"] = "auto"  # folds: k-fold CV on the dataset's folds; split: train/test
    seed: int = 0
    standardize: bool = True  # z-score every feature on the training clips (features differ in scale by 1e10)


class Trainer:
    """Base class. Subclasses set `name`, `VERSION`, `Config`, `tasks`, and define `views`, `fit`, `embed`,
    `state_dict` and `load_state_dict`."""

    name: ClassVar[str]
    VERSION: ClassVar[int]
    Config: ClassVar[type]
    tasks: ClassVar[tuple[str, ...]] = ("classes",)  # the tasks it can learn (the first that applies is used)
    reads: ClassVar[None] = None  # reads upstream feature stores, never the dataset's files

    def __init__(self, config: Any = None, device: str = "auto") -> None:
        self.config: Any = config if dataclasses.is_dataclass(config) else self.Config(**(config or {}))
        self.device = device
        self.history: dict[str, list[float]] = {}  # per-epoch curves (loss, ...) for the run directory

    def views(self) -> list[View]:
        """The named inputs this trainer reads, with their modality and form."""
        raise NotImplementedError

    def fit(self, train: Items, val: Items | None = None, **hooks: Any) -> "Trainer":
        """Learn from the training items (`val`: items for model selection, when the task has them)."""
        raise NotImplementedError

    def embed(self, items: Items) -> dict[str, np.ndarray]:
        """Embeddings of the items, one array per output modality: `[len(items), d]`, or `[len(groups), d]`
        for a modality that embeds a group's shared item (the image of its captions)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything `load_state_dict` needs, as tensors (loadable with torch.load(weights_only=True))."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> "Trainer":
        """Restore a fitted trainer from `state_dict()`."""
        raise NotImplementedError

    @classmethod
    def create(cls, config: Any, device: str, stages: dict[str, dict[str, Any]], restoring: bool = False) -> "Trainer":
        """A trainer for a run. `stages`: view name -> {stage, implementation, params} of the upstream stage
        bound to it, for trainers that build on it (a CNN fine-tuned end to end); `restoring`: for a saved
        run's weights, which replace whatever the stage would load."""
        return cls(config, device)

    def needs_media(self, clip: Any) -> str | None:
        """Why an item lacks raw media this trainer reads (beyond its views), or None."""
        return None

    def media_data(self, items: Items) -> dict[str, Any]:
        """Extra per-group data read from the items' raw media (decoded pictures), added to `items.data`."""
        return {}

    def start_from(self, state: dict[str, Any], train: Items) -> "Trainer":
        """Start from another run's weights (a second training stage)."""
        raise TypeError(f"{self.name} cannot start from another run's model")

    def group_outputs(self) -> frozenset[str]:
        """The `embed` outputs that hold one row per group rather than per item."""
        return frozenset()

    def describe(self) -> dict[str, Any]:
        """Extra facts for the run's params.yaml (what was fine-tuned, from where)."""
        return {}


class ClipVectorTrainer(Trainer):
    """Trainers of two clip-level vectors (audio, visual) and class labels: CCA, Cluster-CCA, TNN-C-CCA.
    `fit_arrays(audio, visual, labels)` and `transform(audio, visual)` hold the method's numerics."""

    tasks = ("classes",)

    def views(self) -> list[View]:
        return [View("audio", "audio"), View("visual", "visual")]

    def fit(self, train: Items, val: Items | None = None, **hooks: Any) -> "ClipVectorTrainer":
        if train.labels is None:
            raise ValueError("these items carry no class labels")
        return self.fit_arrays(train.data["audio"], train.data["visual"], train.labels)

    def embed(self, items: Items) -> dict[str, np.ndarray]:
        a, v = self.transform(items.data["audio"], items.data["visual"])
        return {"audio": a, "visual": v}

    def fit_arrays(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> "ClipVectorTrainer":
        """Learn the shared space from paired rows and their class labels."""
        raise NotImplementedError

    def transform(self, audio: np.ndarray, visual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embed both views into the shared space."""
        raise NotImplementedError

    def fit_scaler(self, audio: np.ndarray, visual: np.ndarray) -> None:
        """Remember each view's per-feature mean and std (when `standardize`) for `scale`."""
        self.norm_ = {}
        if self.config.standardize:
            for view, x in (("audio", audio), ("visual", visual)):
                x = np.asarray(x, dtype=np.float64)
                self.norm_[f"{view}_mean"], self.norm_[f"{view}_std"] = x.mean(0), x.std(0) + 1e-8

    def scale(self, x: np.ndarray, view: str) -> np.ndarray:
        """A view's rows in float64, z-scored with the training statistics when `standardize`."""
        x = np.asarray(x, dtype=np.float64)
        if self.norm_:
            x = (x - self.norm_[f"{view}_mean"]) / self.norm_[f"{view}_std"]
        return x


def tensors(state: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays in a (nested) state dict as torch tensors, so weights_only loading accepts them."""
    import torch

    return {k: tensors(v) if isinstance(v, dict) else torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray)
            else v for k, v in state.items()}


def arrays(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `tensors`: torch tensors back to numpy arrays."""
    import torch

    return {k: arrays(v) if isinstance(v, dict) else v.cpu().numpy() if isinstance(v, torch.Tensor) else v
            for k, v in state.items()}


# -- optional abilities: a trainer has one when it defines its methods; callers test with isinstance ----------------

@runtime_checkable
class EmbedsText(Protocol):
    """Embeds written sentences with its text branch (`pipeline embed --texts`, a typed query)."""

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """`[len(texts), d]` float32 embeddings."""
        ...


@runtime_checkable
class EmbedsImages(Protocol):
    """Embeds pictures with its image branch: from the image stage's maps or, when its trunk was fine-tuned
    (`trunk_live`), from the pictures themselves."""

    trunk_live: bool

    def image_embeddings(self, items: Items, groups: np.ndarray) -> np.ndarray:
        """`[len(groups), d]` embeddings of the items' groups' image maps."""
        ...

    def picture_embeddings(self, pictures: np.ndarray) -> np.ndarray:
        """`[B, d]` embeddings of uint8 pictures `[B, H, W, 3]` through the fine-tuned trunk."""
        ...


@runtime_checkable
class EmbedsAudio(Protocol):
    """Embeds sounds or speech with its audio branch, from the audio view's rows alone (an uploaded recording)."""

    audio_view: str  # the view it reads, and the modality (embeddings store) its outputs belong to

    def audio_embeddings(self, items: Items, idx: np.ndarray) -> np.ndarray:
        """`[len(idx), d]` embeddings of the items `idx` from `items.data[audio_view]`."""
        ...


@runtime_checkable
class EmbedsViews(Protocol):
    """Embeds each view's data on its own, the towers being its extract stages' (a zero-shot space): a query of
    any modality the run reads goes through that view's extractor chain (a typed sentence through a text stage),
    then here."""

    def view_embeddings(self, view: str, data: Any) -> np.ndarray:
        """`[n, d]` embeddings of one view's data in the view's form (`[n, D]` for a vector view)."""
        ...


@runtime_checkable
class ActivationMaps(Protocol):
    """Draws where on an image a text lands: per-channel activation maps and the projection that weighs them."""

    def act_maps(self, items: Items, groups: np.ndarray) -> np.ndarray:
        """`[len(groups), C, h, w]` activation maps of the groups' images."""
        ...

    def fc_weight(self) -> np.ndarray:
        """`[d, C]`: how each channel's map enters the embedding."""
        ...


@runtime_checkable
class AttentionTensors(Protocol):
    """Attends from each speech frame to each image cell (VGS's cross-modal attention)."""

    def av_tensors(self, items: Items) -> np.ndarray:
        """`[len(items), frames, h, w]` attention of each item's speech over its own image."""
        ...


@runtime_checkable
class SelectsEpochs(Protocol):
    """Trains epoch by epoch and keeps the best validated one (`models.common.loop.EpochTrainer`)."""

    def run_epochs(self, train: Any, val: Any = None, on_epoch: Any = None) -> Any:
        """Train the remaining epochs."""
        ...

    def selection(self) -> dict[str, Any]:
        """How the kept model was chosen, for metrics.json."""
        ...
