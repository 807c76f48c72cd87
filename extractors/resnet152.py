"""`resnet152`: torchvision ResNet-152 `layer4` maps per picture, as DSVE-loc (Engilberge et al. 2018) feeds its
image head: the whole picture resized to `image_size` x `image_size` (aspect ratio not kept, no crop: the
reference's `transforms.Resize((s, s))`), ImageNet mean/std, then the trunk up to `layer4`, stored channels last
`[ceil(s / 32), ceil(s / 32), 2048]` (8 x 8 at 256, 13 x 13 at 400 and 416) in `float32` or `float16`;
`layer: logits` stores the 1000 ImageNet class scores of the same input instead (a teacher's)."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from pipeline.registry import register_extractor

from ._frames import LOGITS, FrameConfig, FrameExtractor, torchvision_imagenet
from .base import OutputSpec
from .vgg16 import _ChannelsLast
from .weights import PretrainedWeights, ResolvedWeights, load_into, load_state_dict

log = logging.getLogger(__name__)

CHANNELS = 2048
STRIDE = 32  # conv1, maxpool and layer2..4 each halve the side, rounding up


@dataclass
class ResNet152Config(FrameConfig):
    """Identity params of `resnet152`: the frame params, the input side and the dtype the store holds."""

    image_size: int = 256  # the CNN input side: 256 (training), 400 (retrieval), 416 (pointing game)
    resize: Literal["shorter", "whole"] = "whole"  # whole: squeezed to image_size x image_size; shorter: + centre crop
    dtype: Literal["float32", "float16"] = "float32"  # what the store holds; float16 halves it (123k pictures at 400: ~85 GB)
    layer: Literal["layer4", "logits"] = "layer4"

    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {**FrameConfig.KEY_NEUTRAL, "dtype": "float32", "layer": "layer4"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 (one layer4 cell), got {self.image_size}")
        if self.crop_size is not None:
            raise ValueError(f"resnet152 takes its input side from image_size; leave crop_size unset "
                             f"(got crop_size {self.crop_size}, image_size {self.image_size})")


def map_side(image_size: int) -> int:
    """The side of ResNet-152's `layer4` map for a square input of `image_size`: ceil(image_size / 32)."""
    return math.ceil(image_size / STRIDE)


def format_bytes(n: int) -> str:
    """Bytes in decimal units (GB = 1e9), one decimal."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@register_extractor
class ResNet152(FrameExtractor):
    """ImageNet ResNet-152 `layer4` maps [h, w, 2048] (channels last) of frames sampled at `fps`."""

    name = "resnet152"
    VERSION = 2  # 2: the same frames from both media backends (best-effort timestamps, bitexact decoding)
    Config = ResNet152Config
    arch = "resnet152"
    resize_size = 256  # the weights' own; inputs here are image_size x image_size (see input_size)
    crop_size = 224

    @classmethod
    def pretrained(cls) -> dict[str, PretrainedWeights]:
        return torchvision_imagenet("ResNet152_Weights")

    def input_size(self, crop_size: int | None = None) -> tuple[int, int]:
        """(resize, crop) = (image_size, image_size): `resize: whole` squeezes the picture to that square;
        `resize: shorter` resizes its shorter side to it and takes the centre square."""
        side = int(crop_size or self.config.image_size)
        return side, side

    def frame_dims(self) -> tuple[int, ...]:
        if self.config.layer == "logits":
            return (LOGITS,)
        side = map_side(self.config.image_size)
        return (side, side, CHANNELS)

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        spec = super().output_spec(upstream)
        extra = {**spec.extra, "layer": self.config.layer, "layout": "channels_last", "image_size": self.config.image_size,
                 "resize": self.config.resize}
        return dataclasses.replace(spec, dtype=self.config.dtype, extra=extra)

    def expected_bytes(self, n_clips: int, rows_per_clip: int = 1) -> int:
        """Bytes of the store's data for `n_clips` clips of `rows_per_clip` rows (a picture: 1; pooled: 1)."""
        return n_clips * rows_per_clip * math.prod(self.frame_dims()) * np.dtype(self.config.dtype).itemsize

    def expected_size(self, n_clips: int, rows_per_clip: int = 1) -> str:
        """The plan line, e.g. '123,287 clips x [13, 13, 2048] float16 = 85.3 GB'."""
        rows = "" if rows_per_clip == 1 else f" x {rows_per_clip:,} rows"
        return (f"{n_clips:,} clips{rows} x {list(self.frame_dims())} {self.config.dtype} = "
                f"{format_bytes(self.expected_bytes(n_clips, rows_per_clip))}")

    def build(self, weights: ResolvedWeights) -> Any:
        import torch
        from torchvision.models import resnet152

        # random:SEED: each residual block starts as the identity (torchvision's zero_init_residual); with the
        # plain init, eval-mode BatchNorm normalises nothing and layer4 reaches ~1e7, beyond float16
        net = resnet152(weights=None, zero_init_residual=weights.is_random)
        if not weights.is_random:
            what = f"resnet152 weights '{weights.spec}'"
            state = load_state_dict(weights.paths["model"], what)
            if self.config.layer == "logits" and any(k.removeprefix("module.").startswith("base_layer.") for k in state):
                raise ValueError(f"{what} is a DSVE-loc WELDON checkpoint: it has no ImageNet classifier, so it "
                                 "gives no logits; use ImageNet weights for layer: logits")
            load_into(net, _torchvision_names(state), what)
        if self.config.layer == "logits":
            return net
        return torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                   net.layer4, _ChannelsLast())

    def compute(self, inputs: Sequence[np.ndarray], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        outs = super().compute(inputs, upstream)  # float32 maps (pooled over frames when `pool` says so)
        if self.config.dtype == "float32":
            return outs
        limit = float(np.finfo(self.config.dtype).max)
        peak = max((float(np.abs(x).max()) for x in outs if x.size), default=0.0)
        if peak > limit:
            raise ValueError(f"resnet152: layer4 values up to {peak:.3g} do not fit {self.config.dtype} "
                             f"(max {limit:.3g}); use dtype: float32 for this stage")
        return [x.astype(self.config.dtype) for x in outs]


def _torchvision_names(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with torchvision's names: a DSVE-loc WELDON classifier checkpoint
    (`base_layer.0..7.` = conv1, bn1, relu, maxpool, layer1..4, plus its own `spaConv` and `fc`) is mapped onto
    the trunk, torchvision's unused `fc` filled with zeros; any other file passes unchanged."""
    trunk = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("base_layer.") for k in state):
        return state
    import torch

    out = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head == "base_layer":
            index, _, name = rest.partition(".")
            out[f"{trunk[int(index)]}.{name}"] = v
    log.info("resnet152: a DSVE-loc WELDON checkpoint; its ResNet-152 trunk is used (its spaConv and fc are not)")
    return {**out, "fc.weight": torch.zeros(1000, CHANNELS), "fc.bias": torch.zeros(1000)}  # fc is never run

