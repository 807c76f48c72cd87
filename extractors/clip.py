"""`clip` and `clip_text`: CLIP's image and text towers (Radford et al. 2021) through transformers' `CLIPModel`,
each giving the projected features of the shared image-text space (`get_image_features` /
`get_text_features`, before the L2 normalisation the contrastive logits apply).

`clip` embeds frames sampled at `fps` from a video (or the picture of an image item), preprocessed by the
checkpoint's own image processor (resize the shorter side, centre crop, its mean and std); `pool` as the other
frame extractors. `clip_text` embeds each item's caption or transcript (docs/extractors.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from pipeline.registry import register_extractor

from ._frames import decode_frames
from .base import OutputSpec, split_rows
from .hf import DEFAULTS, EncoderConfig, TextTower, TransformersEncoder, byte_vocab

TINY = {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "heads": 2, "projection_dim": 64}


@dataclass
class ClipImageConfig(EncoderConfig):
    """Identity params of `clip`: the checkpoint, frames per second, pooling over a clip's frames, precision."""

    weights: str = DEFAULTS["clip"]
    fps: float = 1.0
    pool: Literal["none", "mean", "max"] = "none"

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


@dataclass
class ClipTextConfig(EncoderConfig):
    """Identity params of `clip_text`: the checkpoint and the precision."""

    weights: str = DEFAULTS["clip"]


class _Clip:
    """What both CLIP towers share: the family, and the small random model of `random:SEED`."""

    arch = "clip"
    model_class = "CLIPModel"

    def tiny_config(self) -> Any:
        from transformers import CLIPConfig

        vocab = len(byte_vocab(["<|startoftext|>", "<|endoftext|>"], "</w>"))
        t = TINY
        return CLIPConfig(
            text_config=dict(vocab_size=vocab, hidden_size=t["width"], intermediate_size=2 * t["width"],
                             num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                             max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
            vision_config=dict(image_size=t["image_size"], patch_size=t["patch_size"], hidden_size=t["width"],
                               intermediate_size=2 * t["width"], num_hidden_layers=t["layers"],
                               num_attention_heads=t["heads"]),
            projection_dim=t["projection_dim"])

    def tiny_processor(self) -> Any:
        from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

        side = TINY["image_size"]
        return CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
                             CLIPTokenizer(vocab=byte_vocab(["<|startoftext|>", "<|endoftext|>"], "</w>"), merges=[]))


@register_extractor
class ClipImage(_Clip, TransformersEncoder):
    """CLIP image-tower features `[projection_dim]` of frames sampled at `fps` (one row per frame, or pooled)."""

    name = "clip"
    VERSION = 1
    Config = ClipImageConfig
    produces = "visual"
    modality = "visual"
    roles = ("video", "image")

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        pooled = self.config.pool != "none"
        return OutputSpec("visual", (self.projection_dim(),), "float32", None if pooled else float(self.config.fps),
                          {**self.spec_extra("image"), "fps": self.config.fps, "pool": self.config.pool})

    def load(self, clip: Any, upstream: Any = None) -> list[np.ndarray]:
        """The clip's frames at `fps`, resized and cropped by the checkpoint's image processor in the decode thread
        (so a long video holds crops, not whole frames): uint8 [3, S, S] each. Rescaling and normalising in
        `compute` then give the processor's own pixels exactly (tested against the processor on whole frames)."""
        import torch

        frames = decode_frames(self, clip, self.config.fps)
        if not len(frames):
            return []
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        crops = self.processor.image_processor(images=list(x), do_rescale=False, do_normalize=False,
                                               return_tensors="pt")["pixel_values"]
        return [c.to(torch.uint8).numpy() for c in crops]

    def compute(self, inputs: Sequence[Any], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        import torch

        model, processor, device = self._runtime
        def pixels(batch: list[Any]) -> dict[str, Any]:  # the crops of `load`, rescaled and normalised
            return {"pixel_values": processor.image_processor(images=batch, do_resize=False, do_center_crop=False,
                                                              return_tensors="pt", device=device)["pixel_values"]}

        frames = [torch.from_numpy(f) for x in inputs for f in x]
        per_clip = split_rows(self.batched(frames, model.get_image_features, pixels), [len(x) for x in inputs])
        if self.config.pool != "none":  # a clip without frames keeps no rows (it fails as such), not a NaN row
            reduce = np.mean if self.config.pool == "mean" else np.max
            return [reduce(x, axis=0, keepdims=True) if len(x) else x for x in per_clip]
        return per_clip


@register_extractor
class ClipText(_Clip, TextTower):
    """CLIP text-tower features `[projection_dim]` of each item's caption or transcript."""

    name = "clip_text"
    VERSION = 1
    Config = ClipTextConfig

    def max_tokens(self) -> int:
        return int(self.model_config.get("text_config", {}).get("max_position_embeddings", 77))
