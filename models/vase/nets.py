"""VASE's networks (see models/vase/trainer.py): the DAVEnet speech encoder, the image head (on stored features, or a
trainable CNN on raw pictures), the text encoder, and the model that holds the branches."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from models.common.losses import l2norm


class DavenetEncoder(nn.Module):
    """DAVEnet convolutions + bidirectional GRU: log-mel `[B, T, 40]` -> l2-normalised `[B, embed]`."""

    def __init__(self, embed_size: int = 1024, width: float = 1.0, seq_norm: str = "time", n_mels: int = 40) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in (128, 256, 512, 512, 1024))
        self.batchnorm = nn.BatchNorm2d(1)
        self.convs = nn.ModuleList([
            nn.Conv2d(1, c1, (n_mels, 1)), nn.Conv2d(c1, c2, (1, 11), padding=(0, 5)),
            nn.Conv2d(c2, c3, (1, 17), padding=(0, 8)), nn.Conv2d(c3, c4, (1, 17), padding=(0, 8)),
            nn.Conv2d(c4, c5, (1, 17), padding=(0, 8))])
        self.pool = nn.AvgPool2d((1, 3), stride=(1, 2), padding=(0, 1))
        self.rnn = nn.GRU(c5, embed_size, batch_first=True, bidirectional=True)
        self.seq_dim = 1 if seq_norm == "time" else 2
        self.embed_size = embed_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.batchnorm(x.transpose(1, 2).unsqueeze(1))  # [B, 1, 40, T]
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i >= 1:
                x = self.pool(x)
        seq = l2norm(x.squeeze(2).transpose(1, 2), dim=self.seq_dim)  # [B, T/16, C]
        out, _ = self.rnn(seq)
        last = out[:, -1]
        return l2norm((last[:, :self.embed_size] + last[:, self.embed_size:]) / 2)


class ImageEncoder(nn.Module):
    """Pre-extracted CNN features: l2norm -> Linear (Xavier uniform, bias 0) -> l2norm."""

    def __init__(self, in_dim: int = 4096, embed_size: int = 1024) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, embed_size)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2norm(self.fc(l2norm(x)))


class CNNImageEncoder(ImageEncoder):
    """Raw pictures through a trainable CNN, then the `ImageEncoder` head (same `fc` weights, so a model
    trained on the CNN's stored features starts the fine-tuning where it left off)."""

    def __init__(self, cnn: nn.Module, in_dim: int = 4096, embed_size: int = 1024) -> None:
        super().__init__(in_dim, embed_size)
        if getattr(cnn, "aux_logits", False):
            # torchvision's Inception-V3 would also return its auxiliary classifier's logits in training
            # mode (and that branch fails on inputs under 299 px); the embedding uses the main output only
            cnn.aux_logits, cnn.AuxLogits = False, None
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.cnn(x).flatten(1))


class TextEncoder(nn.Module):
    """Word embedding -> GRU -> the output at each caption's last token -> l2norm."""

    def __init__(self, vocab_size: int, word_dim: int = 300, embed_size: int = 1024) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = nn.GRU(word_dim, embed_size, batch_first=True)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        return l2norm(out[torch.arange(len(lengths)), lengths.to(out.device) - 1])


class VASEModel(nn.Module):
    """The branches of one VASE model (text only with three streams)."""

    def __init__(self, cfg: Any, image_dim: int, vocab: Sequence[str] = (), cnn: nn.Module | None = None,
                 ) -> None:
        super().__init__()
        self.speech = DavenetEncoder(cfg.embed_size, cfg.width, cfg.seq_norm)
        self.image = ImageEncoder(image_dim, cfg.embed_size) if cnn is None else CNNImageEncoder(cnn, image_dim,
                                                                                                  cfg.embed_size)
        self.text = TextEncoder(len(vocab), cfg.word_dim, cfg.embed_size) if cfg.streams == 3 else None
