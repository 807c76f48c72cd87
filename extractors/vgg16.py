"""`vgg16`: torchvision VGG16 per sampled frame: `fc7` (4096, after its ReLU), `block5_conv3`
(a 14 x 14 x 512 map after its ReLU at 224 x 224, for attention models) or `logits` (the 1000 ImageNet
class scores before the softmax: a teacher's), ImageNet preprocessing bound to the weights."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.registry import register_extractor

from ._frames import LOGITS, FrameConfig, FrameExtractor, torchvision_imagenet
from .base import OutputSpec
from .weights import PretrainedWeights, ResolvedWeights, load_into, load_state_dict


@dataclass
class VGG16Config(FrameConfig):
    layer: Literal["fc7", "block5_conv3", "logits"] = "fc7"


@register_extractor
class VGG16(FrameExtractor):
    """ImageNet VGG16 features of frames sampled at `fps`."""

    name = "vgg16"
    VERSION = 2  # 2: the same frames from both media backends (best-effort timestamps, bitexact decoding)
    Config = VGG16Config
    arch = "vgg16"
    resize_size = 256
    crop_size = 224

    @classmethod
    def pretrained(cls) -> dict[str, PretrainedWeights]:
        return torchvision_imagenet("VGG16_Weights")

    def frame_dims(self) -> tuple[int, ...]:
        side = self.input_size()[1] // 16  # four 2x2 pools before conv5_3: 14 at 224
        return {"fc7": (4096,), "logits": (LOGITS,)}.get(self.config.layer, (side, side, 512))

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        spec = super().output_spec(upstream)
        return dataclasses.replace(spec, extra={**spec.extra, "layer": self.config.layer})

    def build(self, weights: ResolvedWeights) -> Any:
        import torch
        from torchvision.models import vgg16

        net = vgg16(weights=None)
        if not weights.is_random:
            what = f"vgg16 weights '{weights.spec}'"
            load_into(net, load_state_dict(weights.paths["model"], what), what)
        if self.config.layer == "fc7":
            return torch.nn.Sequential(net.features, net.avgpool, torch.nn.Flatten(1), *net.classifier[:5])
        if self.config.layer == "logits":
            return net.eval()  # the dropouts are off when the runner runs it; eval() here says so
        return torch.nn.Sequential(*net.features[:30], _ChannelsLast())


class _ChannelsLast:
    """[B, C, H, W] -> [B, H, W, C], the Keras layout the seeds' attention models read."""

    def __new__(cls) -> Any:
        import torch

        class Permute(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return x.permute(0, 2, 3, 1)

        return Permute()
