"""Picture fine-tuning, one path for every method: raw pictures for a CNN trained end to end. VASE's `finetune_cnn`:
the visual stage's CNN as a trainable module (`ImageCNN`, with the preprocessing bound to its weights) and its
pictures decoded exactly as that stage decoded them (shorter side resized, not cropped), several at a time, kept in
memory up to a budget (`Pictures`); DSVE-loc's trunk: `TrunkPictures`. Both train on `random_crop_flip`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import torch

_PICTURE_BYTES = 2 << 30  # decoded pictures kept in memory up to this much


@dataclass
class ImageCNN:
    """The CNN fine-tuned as the image branch: a factory for it (with its initial weights) and the
    preprocessing bound to those weights."""

    build: Callable[[], Any]  # normalised float [B, 3, crop, crop] -> [B, dim] (an nn.Module)
    dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int  # input side; pictures arrive resized (shorter side) but not cropped
    name: str = "cnn"


class Pictures:
    """Raw pictures decoded as the visual stage decodes them (uint8 `[3, H, W]`, shorter side resized,
    not cropped), several at a time (ffmpeg runs in threads), kept in memory up to `budget` bytes."""

    def __init__(self, extractor: Any, resize_size: int, budget: int = _PICTURE_BYTES) -> None:
        self.extractor, self.resize_size, self.budget = extractor, resize_size, budget
        self.cache: dict[str, Any] = {}
        self.held = 0

    def _decode(self, clip: Any) -> Any:
        frames = self.extractor.decode_resized(clip, self.resize_size)
        return frames[len(frames) // 2].clone()  # a still picture has one frame; a video, its middle one

    def reader(self, clips: list[Any]) -> "PictureReader":
        """A reader of the pictures of `clips`: `read(indices)`, `read.subset(indices)`."""
        return PictureReader(self, clips)

    def read(self, clips: list[Any], idx: np.ndarray) -> list[Any]:
        """The pictures of `clips[i]` for i in `idx`."""
        from concurrent.futures import ThreadPoolExecutor

        want = [clips[int(i)] for i in idx]
        todo = list({c.clip_id: c for c in want if c.clip_id not in self.cache}.values())
        got: dict[str, Any] = {}
        if todo:
            with ThreadPoolExecutor(max_workers=min(len(todo), max(2, os.cpu_count() or 1), 8)) as pool:
                got = dict(zip((c.clip_id for c in todo), pool.map(self._decode, todo)))
            for cid, img in got.items():
                if self.held + img.numel() <= self.budget:
                    self.cache[cid] = img
                    self.held += img.numel()
        return [self.cache[c.clip_id] if c.clip_id in self.cache else got[c.clip_id] for c in want]


@dataclass
class PictureReader:
    """The pictures of some clips by index (one per group: the group's first clip), sliceable like Items."""

    pictures: Pictures
    clips: list[Any]

    def __call__(self, idx: np.ndarray) -> list[Any]:
        return self.pictures.read(self.clips, idx)

    def subset(self, idx: np.ndarray) -> "PictureReader":
        return PictureReader(self.pictures, [self.clips[int(i)] for i in idx])

    def __len__(self) -> int:
        return len(self.clips)


def view_cnn(stage: dict[str, Any], crop_size: int | None, restoring: bool) -> tuple[ImageCNN, Pictures]:
    """The CNN and picture reader of the stage a trainer's image view reads (`stage`: the run loop's record of it:
    stage, implementation, params); restoring a saved run: the architecture only (its weights come from the run)."""
    params = {**stage["params"], "weights": "random:0"} if restoring else stage["params"]
    return stage_cnn(stage["stage"], stage["implementation"], params, crop_size)


class PictureFinetuning:
    """Trainer mixin for `finetune_cnn`: `create` puts the CNN of the stage bound to the view `picture_view` in
    front of the image branch (restoring a saved run: its architecture only, the weights come from the run's
    model), and `media_data` gives each group's raw picture (its first item's), decoded as that stage decodes."""

    picture_view = "visual"
    _picture_reader: Any = None  # the Pictures of that stage, set by create() with finetune_cnn

    @classmethod
    def create(cls, config: Any, device: str, stages: dict[str, dict[str, Any]], restoring: bool = False) -> Any:
        cfg = config if isinstance(config, cls.Config) else cls.Config(**config)  # type: ignore[attr-defined]
        if not cfg.finetune_cnn:
            return cls(cfg, device)  # type: ignore[call-arg]
        cnn, pictures = view_cnn(stages[cls.picture_view], cfg.crop_size, restoring)
        trainer = cls(cfg, device, cnn=cnn)  # type: ignore[call-arg]
        trainer._picture_reader = pictures
        return trainer

    def media_data(self, items: Any) -> dict[str, Any]:
        if self._picture_reader is None:
            return {}
        return {"pictures": self._picture_reader.reader([items.media[i] for i in items.group_firsts()])}


def stage_cnn(name: str, implementation: str, params: dict[str, Any], crop_size: int | None,
              ) -> tuple[ImageCNN, Pictures]:
    """The CNN of a visual stage (its architecture, weights and preprocessing) and a picture reader."""
    from extractors._frames import FrameExtractor
    from pipeline.registry import EXTRACTORS

    cls = EXTRACTORS.get(implementation)
    if not (isinstance(cls, type) and issubclass(cls, FrameExtractor)):
        raise ValueError(f"finetune_cnn trains the CNN of the visual stage end to end, and stage '{name}' "
                         f"({implementation}) runs no CNN on pictures; use a CNN stage (vgg16) or drop finetune_cnn")
    ext = cls(cls.Config(**params))
    dims = ext.frame_dims()
    if len(dims) != 1:
        raise ValueError(f"finetune_cnn needs a CNN that gives one vector per picture; stage '{name}' gives "
                         f"{list(dims)} maps (its layer param): use layer fc7")
    try:
        resize, crop = ext.input_size(crop_size)
    except ValueError as e:
        raise ValueError(f"finetune_cnn: {e}") from None
    t = ext.preprocessing
    cnn = ImageCNN(ext.network, int(dims[0]), tuple(t.mean), tuple(t.std), crop, implementation)
    return cnn, Pictures(ext, resize)


def cnn_input(cnn: ImageCNN, pictures: list[Any], crop: int, train: bool, device: Any) -> Any:
    """Normalised CNN input `[B, 3, crop, crop]` from uint8 `[3, H, W]` pictures: a random resized crop (scale
    0.08-1) and a random horizontal flip in training (torch's global generator: checkpoints restore it), the
    centre crop otherwise (the stage's own preprocessing), then the weights' mean and std."""
    import torch
    import torchvision.transforms.functional as TF

    out = [random_crop_flip(img, crop) if train else TF.center_crop(img, [crop]) for img in pictures]
    x = torch.stack(out).to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(cnn.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(cnn.std, device=x.device).view(1, -1, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def random_crop_flip(img: Any, size: int) -> Any:
    """The training augmentation of every picture fine-tuning here (VASE's and DSVE-loc's references): a random
    resized crop (scale 0.08-1, ratio 3/4-4/3) to `size` x `size`, then a horizontal flip with probability 1/2, both
    drawn from torch's global generator (checkpoints restore it)."""
    import torch
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    top, left, h, w = T.RandomResizedCrop.get_params(img, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
    img = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    return img.flip(-1) if torch.rand(1).item() < 0.5 else img


@dataclass
class TrunkPictures:
    """DSVE-loc's raw pictures of some groups for its fine-tuned trunk, read by the image stage's extractor: `stored`
    decodes them exactly as the store's rows were made (the whole picture at the stage's size, not cropped, as the
    reference feeds it), `augmented` draws the training crops from the native picture."""

    extractor: Any
    clips: list[Any]

    def subset(self, idx: np.ndarray) -> "TrunkPictures":
        return TrunkPictures(self.extractor, [self.clips[int(i)] for i in idx])

    def __len__(self) -> int:
        return len(self.clips)

    def stored(self, idx: np.ndarray) -> "torch.Tensor":
        """uint8 `[B, 3, s, s]`: the extractor's own input (the whole picture resized to s x s)."""
        import torch

        rows = [self.extractor.load(self.clips[int(i)]) for i in idx]
        return torch.from_numpy(np.stack([r[len(r) // 2] for r in rows])).permute(0, 3, 1, 2)

    def augmented(self, idx: np.ndarray, size: int) -> "torch.Tensor":
        """uint8 `[B, 3, size, size]`: `random_crop_flip` of each native picture."""
        import torch

        frames = [self.extractor.decode(self.clips[int(i)]) for i in idx]
        return torch.stack([random_crop_flip(f[len(f) // 2], size) for f in frames])
