"""The networks of See, Hear, and Read (models/shr/trainer.py): three students and the shared upper layers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from models.shr.trainer import SHRConfig


def _conv_stack(in_channels: int, channels: Sequence[int], kernel: int, stride: int, padding: int) -> Any:
    layers: list[Any] = []
    for c in channels:
        layers += [nn.Conv1d(in_channels, c, kernel, stride=stride, padding=padding), nn.BatchNorm1d(c), nn.ReLU()]
        in_channels = c
    return nn.Sequential(*layers)


class SHRModel(nn.Module):
    """Students for image, sound and text, and the shared upper layers."""

    def __init__(self, cfg: SHRConfig, image_dim: int, sound_dim: int, word_dim: int, classes: int,
                 cnn: nn.Module | None = None) -> None:
        super().__init__()
        if getattr(cnn, "aux_logits", False):  # Inception-V3's auxiliary classifier: not part of the student
            cnn.aux_logits, cnn.AuxLogits = False, None
        self.cnn = cnn  # finetune_cnn: the image stage's CNN, trained on raw pictures
        low, hidden = cfg.size(cfg.low), cfg.size(cfg.hidden)
        chans = [cfg.size(256), cfg.size(512), cfg.size(512), low]
        self.image = nn.Sequential(nn.Linear(image_dim, low), nn.ReLU())
        self.sound = nn.Sequential(nn.BatchNorm1d(sound_dim), _conv_stack(sound_dim, chans, 9, 2, 4))
        self.text = _conv_stack(word_dim, chans, 3, 1, 1)
        self.shared = nn.Sequential(nn.Linear(low, hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                    nn.Linear(hidden, hidden), nn.ReLU())
        self.classes = nn.Linear(hidden, classes)

    def student(self, modality: str, x: "torch.Tensor") -> "torch.Tensor":
        """A modality's input -> its `low` vector: image `[B, D]`, sound `[B, T, F]`, text `[B, L, D]`."""
        if modality == "image":
            return self.image(x if self.cnn is None else self.cnn(x).flatten(1))
        net = self.sound if modality == "sound" else self.text
        return net(x.transpose(1, 2)).amax(dim=2)  # convolve over time (words), then the max over it

    def forward(self, modality: str, x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """(aligned representation `[B, hidden]`, class logits `[B, classes]`)."""
        h = self.shared(self.student(modality, x))
        return h, self.classes(h)
