"""The VGS networks (see models/vgs/trainer.py): the speech and image branches and the two heads, CNNatt and CNN0.
Keras's defaults of the reference are kept: Glorot-uniform kernels and zero biases, batch norm with
momentum 0.99 (torch: 0.01) and epsilon 1e-3, 'same' max pooling padded on the right."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def keras_init(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases on every conv and dense layer (Keras's defaults)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _bn1d(c: int, momentum: float = 0.01) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=1e-3, momentum=momentum)


class SpeechBranch(nn.Module):
    """`[B, T, 40]` -> A `[B, T/8, 512]`: five Conv1D (ReLU, dropout, batch norm), 'same' max pools of 3,
    stride 2 after the second, third and fourth."""

    SPEC = ((128, 5, False), (256, 11, True), (256, 17, True), (512, 17, True), (512, 17, False))

    def __init__(self, n_mels: int = 40, dropout: float = 0.3, width: float = 1.0, bn_momentum: float = 0.01) -> None:
        super().__init__()
        chans = [max(1, round(c * width)) for c, _, _ in self.SPEC]
        ins = [n_mels, *chans[:-1]]
        self.convs = nn.ModuleList(nn.Conv1d(i, o, k, padding=k // 2) for i, o, (_, k, _) in zip(ins, chans, self.SPEC))
        self.norms = nn.ModuleList(_bn1d(o, bn_momentum) for o in chans)
        self.pools = [p for _, _, p in self.SPEC]
        self.drop = nn.Dropout(dropout)
        self.dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # [B, 40, T]
        for conv, norm, pool in zip(self.convs, self.norms, self.pools):
            x = norm(self.drop(F.relu(conv(x))))
            if pool:  # Keras 'same': out = ceil(T / 2), the missing element on the right
                pad = max((-(-x.shape[-1] // 2) - 1) * 2 + 3 - x.shape[-1], 0)
                x = F.max_pool1d(F.pad(x, (pad // 2, pad - pad // 2), value=float("-inf")), 3, 2)
        return x.transpose(1, 2)


class ImageBranch(nn.Module):
    """VGG16 `block5_conv3` maps `[B, H, W, 512]` -> I `[B, H*W, 512]`: batch norm, Conv2D 3x3 (linear),
    dropout, batch norm."""

    def __init__(self, in_ch: int = 512, out_ch: int = 512, dropout: float = 0.3, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_ch, eps=1e-3, momentum=bn_momentum)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.bn1 = nn.BatchNorm2d(out_ch, eps=1e-3, momentum=bn_momentum)
        self.dim = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.drop(self.conv(self.bn0(x.permute(0, 3, 1, 2)))))
        return x.flatten(2).transpose(1, 2)


class AttentionHead(nn.Module):
    """CNNatt: S = A·Iᵀ; per side a softmax and a sigmoid-dense attention over the other side; each side's
    vector [softmax-attended, sigmoid-attended, own mean] (1536-d), l2-normalised; score = their cosine."""

    def __init__(self, n_frames: int, n_pixels: int) -> None:
        super().__init__()
        self.dense_i = nn.Linear(n_pixels, n_pixels)  # over S's pixel axis (Dense(196) on scoreI)
        self.dense_a = nn.Linear(n_frames, n_frames)  # over Sᵀ's frame axis (Dense(64) on scoreA)

    def vectors(self, a: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = a @ i.transpose(1, 2)  # [B, T, P]
        att_i = torch.softmax(s, -1) @ i
        att_id = torch.sigmoid(self.dense_i(s)) @ i
        st = s.transpose(1, 2)
        att_a = torch.softmax(st, -1) @ a
        att_ad = torch.sigmoid(self.dense_a(st)) @ a
        va = torch.cat([att_i.mean(1), att_id.mean(1), a.mean(1)], -1)
        vi = torch.cat([att_a.mean(1), att_ad.mean(1), i.mean(1)], -1)
        return F.normalize(va, dim=-1), F.normalize(vi, dim=-1)

    def forward(self, a: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        va, vi = self.vectors(a, i)
        return (va * vi).sum(-1)

    def av_tensor(self, a: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """S `[B, T, P]`: the dot products of every frame with every pixel."""
        return a @ i.transpose(1, 2)


class MatchmapHead(nn.Module):
    """CNN0: a dense 512 + l2 per branch; the matchmap of cosines of every frame and pixel; score = its mean."""

    def __init__(self, a_dim: int, i_dim: int, dim: int = 512) -> None:
        super().__init__()
        self.dense_a = nn.Linear(a_dim, dim)
        self.dense_i = nn.Linear(i_dim, dim)

    def project(self, a: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.dense_a(a), dim=-1), F.normalize(self.dense_i(i), dim=-1)

    def av_tensor(self, a: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        pa, pi = self.project(a, i)
        return pa @ pi.transpose(1, 2)

    def forward(self, a: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.av_tensor(a, i).mean(dim=(1, 2))


class VGSModel(nn.Module):
    """Both branches and a head (`cnnatt` or `cnn0`)."""

    def __init__(self, model: str, n_mels: int, max_frames: int, grid: tuple[int, int], image_ch: int,
                 dropout: float = 0.3, width: float = 1.0, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.speech = SpeechBranch(n_mels, dropout, width, bn_momentum)
        self.image = ImageBranch(image_ch, self.speech.dim, dropout, bn_momentum)
        n_frames = max_frames
        for _ in range(3):
            n_frames = -(-n_frames // 2)
        self.head: nn.Module = (AttentionHead(n_frames, grid[0] * grid[1]) if model == "cnnatt"
                                else MatchmapHead(self.speech.dim, self.image.dim))
        keras_init(self)

    def speech_embedding(self, a: torch.Tensor) -> torch.Tensor:
        """Pair-free embedding for retrieval, as the reference's recall: the mean over frames of A (CNN0: of
        its projected, l2-normalised rows)."""
        if isinstance(self.head, MatchmapHead):
            a = F.normalize(self.head.dense_a(a), dim=-1)
        return a.mean(1)

    def image_embedding(self, i: torch.Tensor) -> torch.Tensor:
        """The mean over pixels of I (CNN0: of its projected, l2-normalised rows)."""
        if isinstance(self.head, MatchmapHead):
            i = F.normalize(self.head.dense_i(i), dim=-1)
        return i.mean(1)
