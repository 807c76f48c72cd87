"""`inception_v3`: torchvision Inception-V3 pool features (2048 per frame; `layer: logits`: the 1000 ImageNet
class scores instead) at 299 x 299, with the preprocessing bound to the weights (resize 342, centre crop 299,
ImageNet normalisation)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pipeline.registry import register_extractor

from ._frames import LOGITS, FrameConfig, FrameExtractor, torchvision_imagenet
from .base import OutputSpec
from .weights import PretrainedWeights, ResolvedWeights, load_into, load_state_dict


@dataclass
class InceptionV3Config(FrameConfig):
    layer: Literal["pool", "logits"] = "pool"

    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {**FrameConfig.KEY_NEUTRAL, "layer": "pool"}


@register_extractor
class InceptionV3(FrameExtractor):
    """ImageNet Inception-V3 global-average-pool features of frames sampled at `fps`."""

    name = "inception_v3"
    VERSION = 2  # 2: the same frames from both media backends (best-effort timestamps, bitexact decoding)
    Config = InceptionV3Config
    arch = "inception_v3"
    resize_size = 342
    crop_size = 299
    min_crop = 75

    @classmethod
    def pretrained(cls) -> dict[str, PretrainedWeights]:
        return torchvision_imagenet("Inception_V3_Weights")

    def frame_dims(self) -> tuple[int, ...]:
        return (LOGITS,) if self.config.layer == "logits" else (2048,)

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        spec = super().output_spec(upstream)
        return dataclasses.replace(spec, extra={**spec.extra, "layer": self.config.layer})

    def build(self, weights: ResolvedWeights) -> Any:
        import torch
        from torchvision.models import inception_v3

        # transform_input=True is how torchvision's ImageNet weights expect their input
        net = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=weights.is_random)
        if not weights.is_random:
            what = f"inception_v3 weights '{weights.spec}'"
            load_into(net, load_state_dict(weights.paths["model"], what), what)
        if self.config.layer == "pool":
            net.fc = torch.nn.Identity()
        return net
