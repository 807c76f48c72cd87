"""The networks of DSVE-loc (models/dsve/trainer.py): WELDON pooling, the image head on ResNet-152 `layer4` maps and the
SRU caption encoder, joined in `DSVEModel`."""
from __future__ import annotations

import math

import torch
from torch import nn

from models.common.losses import l2norm
from models.common.sru import SruEncoder


class WeldonPooling(nn.Module):
    """WELDON pooling (Durand et al.): per channel, the mean of the `n_max` highest values plus the mean of the
    `n_min` lowest (`n_min` defaults to `n_max`; 0 leaves that part out). A count below 1 is a fraction of
    the map's cells (at least one), as the reference's."""

    def __init__(self, n_max: float = 15, n_min: float | None = None) -> None:
        super().__init__()
        self.n_max = n_max
        self.n_min = n_max if n_min is None else n_min

    @staticmethod
    def _count(n: float, cells: int) -> int:
        if n <= 0:
            return 0
        k = int(n) if n >= 1 else max(1, math.floor(n * cells))
        if k > cells:
            raise ValueError(f"WELDON pooling keeps {k} regions of a map of only {cells} cells: use a larger "
                             f"image_size or a smaller n_max")
        return k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` -> `[B, C]`."""
        if x.dim() != 4:
            raise ValueError(f"WeldonPooling needs [B, C, H, W], got {tuple(x.shape)}")
        flat = x.flatten(2)
        k_max, k_min = self._count(self.n_max, flat.shape[-1]), self._count(self.n_min, flat.shape[-1])
        out = flat.topk(k_max, dim=-1).values.mean(-1) if k_max else flat.new_zeros(flat.shape[:2])
        if k_min:
            out = out + flat.topk(k_min, dim=-1, largest=False).values.mean(-1)
        return out


class FrozenStem(nn.Sequential):
    """The trunk's layers that never train (conv1 .. layer2, as the reference keeps them): always in eval mode,
    so their BatchNorm statistics stay those of the stored features."""

    def train(self, mode: bool = True) -> "FrozenStem":
        return super().train(False)


class Trunk(nn.Module):
    """ResNet-152 up to `layer4` for the fine-tuning phase: `stem` (conv1 .. layer2) frozen, `top` (layer3, layer4)
    trained; channels-last maps out, like the `resnet152` store's rows."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        mods = list(layers.children())[:8]  # conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4
        self.stem = FrozenStem(*mods[:6])
        self.top = nn.Sequential(*mods[6:8])
        for q in self.stem.parameters():
            q.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pictures `[B, 3, s, s]` -> `[B, h, w, 2048]`."""
        return self.top(self.stem(x)).permute(0, 2, 3, 1)


class DSVEModel(nn.Module):
    """Image: `layer4` map -> 1x1 conv (2048 -> map_channels) -> WELDON -> dropout -> linear -> l2.
    Text: word vectors -> SRU -> last valid step -> l2. With a `trunk`, pictures can go through ResNet-152 first."""

    def __init__(self, in_channels: int = 2048, map_channels: int = 2400, embed_size: int = 2400, n_max: float = 15,
                 dropout: float = 0.5, word_dim: int = 620, sru_layers: int = 4, text_dropout: float = 0.25,
                 trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.conv = nn.Conv2d(in_channels, map_channels, 1)
        self.pool = WeldonPooling(n_max)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(map_channels, embed_size)
        self.text = SruEncoder(sru_layers, word_dim, embed_size, text_dropout)

    def act_map(self, maps: torch.Tensor) -> torch.Tensor:
        """The 1x1 conv's output `[B, map_channels, H, W]` of channels-last maps `[B, H, W, C]`."""
        return self.conv(maps.permute(0, 3, 1, 2))

    def image(self, maps: torch.Tensor) -> torch.Tensor:
        """l2-normalised image embeddings `[B, embed]` of `[B, H, W, C]` maps."""
        return l2norm(self.fc(self.dropout(self.pool(self.act_map(maps)))))

    def caption(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """l2-normalised caption embeddings `[B, embed]` of word vectors `[B, L, word_dim]`."""
        return l2norm(self.text(words, lengths))
