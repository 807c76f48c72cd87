"""VASE (Cheng et al., TMM 2022): speech-image(-text) embedding with VSE losses and reconstruction.

Branches, each ending in an l2-normalised `embed_size` vector:
- speech: DAVEnet on the `davenet` log-mel preset ([T, 40], T <= 2048): BatchNorm(1) ->
  Conv(1->128, 40x1) -> Conv(128->256, 1x11) -> pool -> Conv(256->512, 1x17) -> pool ->
  Conv(512->512, 1x17) -> pool -> Conv(512->1024, 1x17) -> pool (ReLU after each conv, every pool
  AvgPool (1,3) stride (1,2) pad (0,1)); the [T/16, 1024] sequence is l2-normalised (along time,
  as the reference code does; `seq_norm: feature` normalises each step instead), a bidirectional
  GRU runs over it, the two directions are averaged and the last step is kept.
- image: VGG16 fc7 from the feature store (frozen): l2norm -> Linear(4096 -> embed, Xavier) -> l2norm.
  With `finetune_cnn` the CNN itself is the first layer of the branch and is trained end to end on
  raw pictures (the reference's `--finetune`): training pictures get a random resized crop and a
  random horizontal flip, evaluation pictures the CNN's own resize + centre crop (the preprocessing
  that produced the stored features), normalised with the weights' mean and std.
- text (three-stream): word embedding 300 (uniform +-0.1) -> GRU -> output at the caption's last
  word -> l2norm; the vocabulary is built from the training captions.

Loss: VSE hinge (`models.losses.ContrastiveLoss`) on image-speech (+ image-text + speech-text with
three streams) plus `rec_weight` x the reconstruction loss (`models.losses.reconstruction_loss`:
every view rebuilt from the other view(s) of the batch, twice). Adam, gradient norm clipped at
`grad_clip`, lr x 0.1 every `lr_update` epochs; after each epoch the validation split is ranked
and the model with the best rsum (R@1+R@5+R@10, image->speech and speech->image) is kept.

Deviations from the reference code (chwlsunny/VASE), on purpose: speech embeddings are l2-normalised
(the reference scores them by raw dot products; the VSE loss here is on cosine similarities, as
the method describes); in three-stream reconstruction each target's weights are a softmax over its
sources (the reference normalises over targets, then transposes).

Width knobs for small machines: `width` scales the DAVEnet channels (1.0 = 128/256/512/512/1024),
`max_frames` crops the log-mel (2048 = the reference's 20.48 s).
"""
from __future__ import annotations

import copy
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.registry import register_trainer

from .base import Trainer
from .losses import ContrastiveLoss, l2norm, reconstruction_loss
from .metrics import caption_recall

log = logging.getLogger(__name__)

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"


@dataclass
class VASEConfig:
    streams: Literal[2, 3] = 2  # 2: image + speech; 3: + text
    embed_size: int = 1024
    width: float = 1.0  # DAVEnet channel multiplier
    max_frames: int = 2048  # log-mel frames fed to DAVEnet (10 ms each)
    seq_norm: Literal["time", "feature"] = "time"
    word_dim: int = 300
    min_word_count: int = 4  # vocabulary: words seen at least this often in the training captions
    margin: float = 0.2
    max_violation: bool = False
    smooth: float | None = None  # reconstruction softmax temperature; None: 6 (two streams), 4 (three)
    rec_weight: float = 0.05
    rec_rounds: int = 2
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-4
    lr_update: int = 15  # lr x 0.1 every this many epochs
    grad_clip: float = 2.0
    seed: int = 0
    eval_folds: int = 1  # > 1: test metrics averaged over this many slices of the test images (5 x 1000)
    finetune_cnn: bool = False  # train the image CNN end to end on raw pictures (needs the dataset's images)
    crop_size: int | None = None  # CNN input side with finetune_cnn; None: the visual stage's (224 for VGG16)

    # added after runs were cached: at these values they stay out of the run key, so those runs stay valid
    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {"finetune_cnn": False, "crop_size": None}

    def __post_init__(self) -> None:
        checks = [(self.streams in (2, 3), "streams must be 2 or 3"), (self.embed_size >= 1, "embed_size must be >= 1"),
                  (self.width > 0, "width must be > 0"), (self.max_frames >= 16, "max_frames must be >= 16"),
                  (self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 2, "batch_size must be >= 2"),
                  (self.lr > 0, "lr must be > 0"), (self.lr_update >= 1, "lr_update must be >= 1"),
                  (self.rec_rounds >= 0, "rec_rounds must be >= 0"), (self.eval_folds >= 1, "eval_folds must be >= 1"),
                  (self.crop_size is None or self.crop_size >= 16, "crop_size must be >= 16 (or null: the CNN's)"),
                  (self.crop_size is None or self.finetune_cnn, "crop_size is the fine-tuned CNN's input side: "
                   "it needs finetune_cnn: true (stored features have the visual stage's crop_size)")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def smoothing(self) -> float:
        """The reconstruction temperature in use (VASE's defaults: 6 for two streams, 4 for three)."""
        return float(self.smooth if self.smooth is not None else (6.0 if self.streams == 2 else 4.0))


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", text.lower())


def build_vocab(captions: Sequence[str], min_count: int) -> list[str]:
    """Special tokens, then words seen >= `min_count` times, most frequent first (ties alphabetical)."""
    counts = Counter(w for c in captions for w in tokenize(c))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return [PAD, START, END, UNK, *words]


def encode_captions(captions: Sequence[str], vocab: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids `[B, L]` (0-padded, <start> ... <end>) and lengths `[B]`."""
    index = {w: i for i, w in enumerate(vocab)}
    ids = [[index[START], *(index.get(w, index[UNK]) for w in tokenize(c)), index[END]] for c in captions]
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    out = torch.zeros(len(ids), int(lengths.max()) if len(ids) else 0, dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, :len(x)] = torch.tensor(x)
    return out, lengths


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


@dataclass
class ImageCNN:
    """The CNN fine-tuned as the image branch: a factory for it (with its initial weights) and the
    preprocessing bound to those weights."""

    build: Callable[[], nn.Module]  # normalised float [B, 3, crop, crop] -> [B, dim]
    dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int  # input side; pictures arrive resized (shorter side) but not cropped
    name: str = "cnn"


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

    def __init__(self, cfg: VASEConfig, image_dim: int, vocab: Sequence[str] = (), cnn: nn.Module | None = None,
                 ) -> None:
        super().__init__()
        self.speech = DavenetEncoder(cfg.embed_size, cfg.width, cfg.seq_norm)
        self.image = ImageEncoder(image_dim, cfg.embed_size) if cnn is None else CNNImageEncoder(cnn, image_dim,
                                                                                                  cfg.embed_size)
        self.text = TextEncoder(len(vocab), cfg.word_dim, cfg.embed_size) if cfg.streams == 3 else None


@dataclass
class CaptionData:
    """Paired items of one split: spoken captions, the image each describes, and its transcript.

    `audio(indices)` returns the log-mel rows of those captions, `[B, T, 40]` (read lazily: a whole
    corpus of [2048, 40] spectrograms need not fit in memory). `pictures(image_indices)`, when the raw
    images are at hand, returns them as uint8 `[3, H, W]` tensors, shorter side resized, not cropped."""

    clip_ids: list[str]
    image_of: np.ndarray  # [n_captions] index into `images`
    images: np.ndarray  # [n_images, image_dim] pre-extracted image features
    audio: Callable[[np.ndarray], np.ndarray]
    texts: list[str]
    groups: list[str] = field(default_factory=list)  # image ids, aligned with `images`
    pictures: Callable[[np.ndarray], list[torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.clip_ids)


def _autocast(device: torch.device) -> Any:
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@register_trainer
class VASETrainer(Trainer):
    """VASE: trains on paired spoken captions and images (and transcripts), selects by validation rsum."""

    name = "vase"
    VERSION = 1
    Config = VASEConfig
    task: ClassVar[str] = "captions"  # paired items (captions grouped by image), not labelled clips

    def __init__(self, config: Any = None, device: str = "auto", cnn: ImageCNN | None = None) -> None:
        super().__init__(config, device)
        from extractors._torch import pick_device

        self.torch_device = pick_device(device)
        self.cnn = cnn
        if self.config.finetune_cnn and cnn is None:
            raise ValueError("finetune_cnn trains the image CNN end to end: pass the CNN (cnn=ImageCNN(...)); the "
                             "pipeline takes it from the visual stage")
        self.model: VASEModel | None = None
        self.vocab: list[str] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.epoch = -1  # last completed epoch
        self.best_rsum = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, Any] | None = None

    # -- building and state ------------------------------------------------------------------------

    def build(self, image_dim: int, vocab: Sequence[str] = ()) -> "VASETrainer":
        """A freshly initialised model (seeded) and its optimizer; with `finetune_cnn` the CNN starts from its own weights."""
        cnn = self.cnn.build() if self.config.finetune_cnn and self.cnn is not None else None
        if cnn is not None:
            image_dim = self.cnn.dim
        torch.manual_seed(self.config.seed)
        self.vocab = list(vocab)
        self.model = VASEModel(self.config, image_dim, self.vocab, cnn).to(self.torch_device)
        # fused: one kernel over all tensors; on a CPU it steps VGG16's 134M parameters ~5x faster than foreach
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr, fused=True)
        return self

    def init_from(self, state: dict[str, Any]) -> "VASETrainer":
        """Start from another run's weights (stage 2 from stage 1's best): weights only, fresh optimizer."""
        if self.model is None:
            raise RuntimeError("build() the model before init_from()")
        if self.config.streams == 3 and list(state.get("vocab", [])) != self.vocab:
            self.vocab = list(state["vocab"])
            self.build(self.model.image.fc.in_features, self.vocab)
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        missing = [k for k in missing if not k.startswith("image.cnn.")]  # the CNN keeps its own weights
        if missing:
            raise ValueError(f"the initial weights lack {len(missing)} tensor(s) this model needs (e.g. "
                             f"{missing[0]}): a stage-1 run with other streams or sizes?")
        if unexpected:
            log.info("init: %d tensor(s) of the initial model unused here (e.g. %s)", len(unexpected), unexpected[0])
        return self

    def state_dict(self) -> dict[str, Any]:
        """The best model's weights, vocabulary and selection record (torch.load(weights_only=True) safe)."""
        assert self.model is not None
        return {"model": self.best_state or self.model.state_dict(), "vocab": list(self.vocab),
                "image_dim": int(self.model.image.fc.in_features), "best_epoch": int(self.best_epoch),
                "best_rsum": float(self.best_rsum)}

    def load_state_dict(self, state: dict[str, Any]) -> "VASETrainer":
        """Restore a trained model from `state_dict()` (or a checkpoint)."""
        self.build(int(state["image_dim"]), state.get("vocab", []))
        assert self.model is not None
        self.model.load_state_dict(state["model"])
        self.best_epoch, self.best_rsum = int(state.get("best_epoch", -1)), float(state.get("best_rsum", -math.inf))
        return self

    def checkpoint(self) -> dict[str, Any]:
        """Everything to resume training after the last completed epoch."""
        assert self.model is not None and self.optimizer is not None
        rng = {"torch_rng": torch.get_rng_state()}
        if self.torch_device.type == "cuda":  # dropout in a fine-tuned CNN draws from the CUDA generator
            rng["cuda_rng"] = torch.cuda.get_rng_state_all()
        return {**self.state_dict(), "current": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": int(self.epoch), "history": self.history, **rng}

    def resume(self, ckpt: dict[str, Any]) -> "VASETrainer":
        """Continue from `checkpoint()`: current weights, optimizer, epoch, best model so far, history."""
        self.build(int(ckpt["image_dim"]), ckpt.get("vocab", []))
        assert self.model is not None and self.optimizer is not None
        self.model.load_state_dict(ckpt["current"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.history = int(ckpt["epoch"]), dict(ckpt["history"])
        self.best_epoch, self.best_rsum = int(ckpt["best_epoch"]), float(ckpt["best_rsum"])
        self.best_state = ckpt["model"]
        torch.set_rng_state(ckpt["torch_rng"])
        if self.torch_device.type == "cuda" and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        return self

    # -- training ----------------------------------------------------------------------------------

    def _frames(self, data: CaptionData, idx: np.ndarray) -> torch.Tensor:
        x = np.asarray(data.audio(idx), dtype=np.float32)[:, :self.config.max_frames]
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_device)

    @property
    def finetuning(self) -> bool:
        """Whether the image branch runs the CNN on raw pictures (else it reads stored features)."""
        return isinstance(self.model.image if self.model is not None else None, CNNImageEncoder)

    def _pictures(self, data: CaptionData, image_idx: np.ndarray, train: bool) -> torch.Tensor:
        """Normalised CNN input `[B, 3, crop, crop]`: a random resized crop and a random flip in training
        (torch's global generator: checkpoints restore it), the centre crop otherwise."""
        import torchvision.transforms as T
        import torchvision.transforms.functional as TF

        assert self.cnn is not None
        if data.pictures is None:
            raise ValueError("finetune_cnn runs the CNN on raw pictures, and these captions come without them "
                             "(CaptionData.pictures is None)")
        crop = int(self.config.crop_size or self.cnn.crop_size)
        out = []
        for img in data.pictures(image_idx):
            if train:
                i, j, h, w = T.RandomResizedCrop.get_params(img, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
                img = TF.resized_crop(img, i, j, h, w, [crop, crop], antialias=True)
                if torch.rand(1).item() < 0.5:
                    img = img.flip(-1)
            else:
                img = TF.center_crop(img, [crop])
            out.append(img)
        x = torch.stack(out).to(self.torch_device, non_blocking=True).float().div_(255.0)
        mean = torch.tensor(self.cnn.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.cnn.std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x

    def _image_input(self, data: CaptionData, image_idx: np.ndarray, train: bool) -> torch.Tensor:
        if self.finetuning:
            return self._pictures(data, image_idx, train)
        return torch.from_numpy(np.asarray(data.images[image_idx], dtype=np.float32)).to(self.torch_device)

    def _forward(self, data: CaptionData, idx: np.ndarray) -> list[torch.Tensor]:
        assert self.model is not None
        img = self._image_input(data, data.image_of[idx], train=True)
        views = [self.model.image(img), self.model.speech(self._frames(data, idx))]
        if self.model.text is not None:
            ids, lengths = encode_captions([data.texts[i] for i in idx], self.vocab)
            views.append(self.model.text(ids.to(self.torch_device), lengths))
        return views

    def loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, float, float]:
        """(total, VSE part, reconstruction part) of one batch of branch outputs."""
        cfg = self.config
        crit = ContrastiveLoss(cfg.margin, cfg.max_violation)
        views = [v.float() for v in views]
        vse = crit(views[0], views[1])
        if len(views) == 3:
            vse = vse + crit(views[0], views[2]) + crit(views[1], views[2])
        rec = reconstruction_loss(views, cfg.smoothing, cfg.rec_rounds) if cfg.rec_rounds else torch.zeros(())
        return vse + cfg.rec_weight * rec, float(vse.detach()), float(rec.detach())

    def fit_pairs(self, train: CaptionData, val: CaptionData, on_epoch: Callable[["VASETrainer", bool], None] | None = None,
                  ) -> "VASETrainer":
        """Train the remaining epochs (all of them, unless resumed), validating after each one."""
        cfg = self.config
        if self.model is None:
            vocab = build_vocab(train.texts, cfg.min_word_count) if cfg.streams == 3 else []
            self.build(train.images.shape[1], vocab)
        assert self.model is not None and self.optimizer is not None
        if len(train) < 2:
            raise ValueError(f"needs >= 2 training captions, has {len(train)}")
        for epoch in range(self.epoch + 1, cfg.epochs):
            lr = cfg.lr * 0.1 ** (epoch // cfg.lr_update)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.model.train()
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train))
            sums = np.zeros(3)
            steps = 0
            for a in range(0, len(order), cfg.batch_size):
                idx = order[a:a + cfg.batch_size]
                if len(idx) < 2:
                    continue  # a batch of one has no negatives
                with _autocast(self.torch_device):
                    views = self._forward(train, idx)
                total, vse, rec = self.loss(views)
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                sums += (float(total.detach()), vse, rec)
                steps += 1
            val_metrics = self.evaluate(val)
            self.epoch = epoch
            for k, v in (("loss", sums[0] / steps), ("vse_loss", sums[1] / steps), ("rec_loss", sums[2] / steps),
                         ("lr", lr), ("val_rsum", val_metrics["rsum"]),
                         *((f"val_{d}_r@{k}", val_metrics[d][f"r@{k}"]) for d in ("image2speech", "speech2image")
                           for k in (1, 5, 10))):
                self.history.setdefault(k, []).append(float(v))
            improved = val_metrics["rsum"] > self.best_rsum
            if improved:
                self.best_rsum, self.best_epoch = float(val_metrics["rsum"]), epoch
                self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            log.info("vase epoch %d/%d: loss %.3f, val rsum %.1f%s", epoch + 1, cfg.epochs, sums[0] / steps,
                     val_metrics["rsum"], " (best)" if improved else "")
            if on_epoch:
                on_epoch(self, improved)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self

    # -- embedding and evaluation ------------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, data: CaptionData, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Embeddings of a split: `image` per image, `speech` (and `text`) per caption."""
        assert self.model is not None
        self.model.eval()
        bs = batch_size or max(self.config.batch_size, 64)
        out: dict[str, list[np.ndarray]] = {"image": [], "speech": [], "text": []}
        with _autocast(self.torch_device):
            for a in range(0, len(data.images), bs):
                x = self._image_input(data, np.arange(a, min(a + bs, len(data.images))), train=False)
                out["image"].append(self.model.image(x).float().cpu().numpy())
            for a in range(0, len(data), bs):
                idx = np.arange(a, min(a + bs, len(data)))
                out["speech"].append(self.model.speech(self._frames(data, idx)).float().cpu().numpy())
                if self.model.text is not None:
                    ids, lengths = encode_captions([data.texts[i] for i in idx], self.vocab)
                    out["text"].append(self.model.text(ids.to(self.torch_device), lengths).float().cpu().numpy())
        dim = self.config.embed_size
        return {k: np.concatenate(v) if v else np.zeros((0, dim), np.float32) for k, v in out.items()
                if v or k != "text"}

    def evaluate(self, data: CaptionData, folds: int = 1) -> dict[str, Any]:
        """Recall@1/5/10, medr, meanr both ways (image <-> speech; and image <-> text with three streams)."""
        return caption_recall(self.encode(data), data.image_of, folds=folds)

    def fit(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> "VASETrainer":
        """Not for labelled clip vectors: VASE trains on paired captions (see `fit_pairs`)."""
        raise TypeError("VASE trains on spoken captions paired with images (fit_pairs), not on labelled clip vectors")
