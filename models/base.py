"""The trainer contract: identity params in `Config`, an explicit VERSION, fit / transform / state.

A trainer learns a shared space from two paired views (audio rows and visual rows of the same
clips, clip-level vectors) and the clips' class labels; `transform` maps both views into it. The
pipeline (pipeline/train.py) reads the views from feature stores, runs the cross-validation, saves
state and embeddings, and evaluates; a trainer does no I/O.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np


@dataclass
class TrainConfig:
    """Params every trainer has: they change results, so they are identity params."""

    protocol: Literal["auto", "folds", "split"] = "auto"  # folds: k-fold CV on the dataset's folds; split: train/test
    seed: int = 0
    standardize: bool = True  # z-score every feature on the training clips (features differ in scale by 1e10)


class Trainer:
    """Base class: `fit(audio, visual, labels)`, then `transform(audio, visual) -> (a, v)`."""

    name: ClassVar[str]
    VERSION: ClassVar[int]
    Config: ClassVar[type]
    reads: ClassVar[None] = None  # reads upstream feature stores, never the dataset's files

    def __init__(self, config: Any = None, device: str = "auto") -> None:
        self.config = config if dataclasses.is_dataclass(config) else self.Config(**(config or {}))
        self.device = device
        self.history: dict[str, list[float]] = {}  # per-epoch curves (loss, ...) for the run directory

    def fit(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> "Trainer":
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

    def state_dict(self) -> dict[str, Any]:
        """Everything `load_state_dict` needs, as tensors (loadable with torch.load(weights_only=True))."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> "Trainer":
        """Restore a fitted trainer from `state_dict()`."""
        raise NotImplementedError


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
