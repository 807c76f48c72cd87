"""Shared machinery of the visual extractors: sample frames at `fps`, batch frames across clips
through a torchvision CNN with the preprocessing bound to its weights, optionally pool per clip."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from . import _torch
from .base import Extractor, OutputSpec, split_rows
from .weights import PretrainedWeights, ResolvedWeights, WeightsFile, announce_random, resolve_weights

LOGITS = 1000  # `layer: logits`: the ImageNet class scores before the softmax (a teacher's, for See-Hear-Read)


@dataclass
class FrameConfig:
    """Identity params every visual extractor has."""

    weights: str = "imagenet"
    fps: float = 1.0
    pool: Literal["none", "mean", "max"] = "none"
    crop_size: int | None = None  # CNN input side; None: the weights' own (resize keeps the weights' resize : crop)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (fast on CPUs with AVX512-BF16/AMX, and CUDA)
    resize: Literal["shorter", "whole"] = "shorter"  # whole: the whole picture squeezed to crop x crop, no crop (VGS)

    # added after stores were cached: at these values they stay out of the store key, so those stores stay valid
    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {"crop_size": None, "precision": "fp32", "resize": "shorter"}

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.crop_size is not None and self.crop_size < 32:
            raise ValueError(f"crop_size must be >= 32 (or null: the weights' own), got {self.crop_size}")


def decode_frames(ex: Extractor, clip: Any, fps: float) -> np.ndarray:
    """A clip's frames (or its picture) at `fps`, native size, with the extractor's media decoder: uint8 [T, H, W, 3]."""
    duration = clip.end - clip.start if clip.start is not None and clip.end is not None else None
    return ex.media.decode_frames(clip.source(*ex.roles), fps, None, start=clip.start, duration=duration)


def torchvision_imagenet(enum_name: str) -> dict[str, PretrainedWeights]:
    """The `imagenet` entry for a torchvision weights enum (file URL, metadata, bound preprocessing)."""
    import torchvision.models as tvm

    w = getattr(tvm, enum_name).IMAGENET1K_V1
    return {"imagenet": PretrainedWeights("imagenet", {"model": WeightsFile(w.url)}, dict(w.meta), w.transforms)}


class FrameExtractor(Extractor):
    """Config needs `weights`, `fps` and `pool`; subclasses give the network and its output dims."""

    produces = "visual"
    modality = "visual"
    roles = ("video", "image")
    arch: ClassVar[str]
    resize_size: ClassVar[int]
    crop_size: ClassVar[int]
    min_crop: ClassVar[int] = 32  # the smallest input the network takes

    @classmethod
    def pretrained(cls) -> dict[str, PretrainedWeights]:
        raise NotImplementedError

    def build(self, weights: ResolvedWeights) -> Any:
        """The torch module mapping a normalised [B, 3, crop, crop] batch to [B, *frame_dims]."""
        raise NotImplementedError

    def frame_dims(self) -> tuple[int, ...]:
        raise NotImplementedError

    @functools.cached_property
    def weights(self) -> ResolvedWeights:
        return resolve_weights(self.config.weights, self.arch, self.pretrained, download=self.allow_download,
                               dirs=self.weights_dirs)

    def weights_digest(self) -> str | None:
        return self.weights.digest

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        pooled = self.config.pool != "none"
        return OutputSpec("visual", self.frame_dims(), "float32", None if pooled else float(self.config.fps),
                          {"fps": self.config.fps, "pool": self.config.pool, "weights": self.config.weights,
                           "random_weights": self.weights.is_random, "arch": self.arch,
                           "input_size": self.input_size()[1], "precision": self.config.precision})

    @functools.cached_property
    def preprocessing(self) -> Any:
        """The weights' bound ImageClassification transform (resize, crop, mean, std, interpolation)."""
        return self.pretrained()["imagenet"].transforms()

    def load(self, clip: Any, upstream: Any = None) -> np.ndarray:
        """Frames at `fps`, then the weights' resize + centre crop (or, `resize: whole`, the whole frame
        resized to crop x crop, as the VGS reference feeds VGG16): uint8 [T, crop, crop, 3]."""
        import torchvision.transforms.functional as TF

        crop = self.input_size()[1]
        if self.config.resize == "whole":
            t = self.preprocessing
            x = TF.resize(self.decode(clip), [crop, crop], interpolation=t.interpolation, antialias=t.antialias)
        else:
            x = TF.center_crop(self.decode_resized(clip), [crop])
        return x.permute(0, 2, 3, 1).contiguous().numpy()

    def input_size(self, crop_size: int | None = None) -> tuple[int, int]:
        """(resize, crop): the shorter side is resized to the first, then the centre crop x crop square is
        the input; the weights' own sizes unless `crop_size` (or the config's) is given, the resize then
        scaled by the weights' resize : crop ratio."""
        crop = int(crop_size or self.config.crop_size or self.crop_size)
        if crop < self.min_crop:
            raise ValueError(f"{self.arch} takes inputs of at least {self.min_crop} x {self.min_crop}; crop_size is {crop}")
        return max(crop, round(self.resize_size * crop / self.crop_size)), crop

    def decode(self, clip: Any) -> Any:
        """A clip's frames at `fps`, native size: a uint8 tensor [T, 3, H, W]."""
        import torch

        return torch.from_numpy(decode_frames(self, clip, self.config.fps)).permute(0, 3, 1, 2)

    def decode_resized(self, clip: Any, resize_size: int | None = None) -> Any:
        """A clip's frames at `fps`, shorter side resized to `resize_size` (default: `input_size()`'s) with
        the weights' interpolation, not cropped: a uint8 tensor [T, 3, H, W]."""
        import torchvision.transforms.functional as TF

        t = self.preprocessing
        return TF.resize(self.decode(clip), [resize_size or self.input_size()[0]], interpolation=t.interpolation,
                         antialias=t.antialias)

    def network(self) -> Any:
        """The torch module of `build()` with this stage's weights (random weights seeded as the stage seeds them)."""
        import torch

        if self.weights.is_random:
            torch.manual_seed(self.weights.seed)
        return self.build(self.weights)

    @functools.cached_property
    def _runtime(self) -> tuple[Any, Any, Any]:
        import torch

        announce_random(self.arch, self.weights)
        device = _torch.pick_device(self.execution.device if self.execution else "auto")
        model = _torch.prepare_model(self.network(), device, image=True)
        t = self.preprocessing
        mean = torch.tensor(t.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(t.std, device=device).view(1, 3, 1, 1)

        def normalize(batch: Any) -> Any:  # uint8 [B, H, W, 3] on the device -> normalised float [B, 3, H, W]
            return (batch.permute(0, 3, 1, 2).float().div_(255.0) - mean) / std

        return model, normalize, device

    def compute(self, inputs: Sequence[np.ndarray], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        # one picture shared by several clips (the 5 spoken captions of an image) goes through the CNN once
        unique: dict[tuple, int] = {}
        where = [unique.setdefault((x.shape, hashlib.blake2b(x.tobytes(), digest_size=16).digest()), len(unique))
                 for x in inputs]
        if len(unique) < len(inputs):
            first = {w: i for i, w in reversed(list(enumerate(where)))}
            outs = self._compute([inputs[first[w]] for w in range(len(unique))])
            return [outs[w] for w in where]
        return self._compute(inputs)

    def _compute(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        model, transform, device = self._runtime
        frames = np.concatenate(inputs, axis=0) if inputs else np.zeros((0, 1, 1, 3), np.uint8)
        batch = self.execution.batch_size if self.execution else 32
        out = _torch.run_batched(model, frames, batch, device, prepare=transform, image=True,
                                 precision=self.config.precision)
        per_clip = [x.reshape(len(x), *self.frame_dims()).astype(np.float32)
                    for x in split_rows(out, [x.shape[0] for x in inputs])]
        if self.config.pool == "mean":
            return [x.mean(axis=0, keepdims=True) for x in per_clip]
        if self.config.pool == "max":
            return [x.max(axis=0, keepdims=True) for x in per_clip]
        return per_clip
