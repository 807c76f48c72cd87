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

Loss: VSE hinge (`models.common.losses.ContrastiveLoss`) on image-speech (+ image-text + speech-text with
three streams) plus `rec_weight` x the reconstruction loss (`models.common.losses.reconstruction_loss`:
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

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np

from models.common.items import Items, View, build_vocab, encode_texts  # noqa: F401
from models.common.lazy import lazy
from models.common.loop import EpochTrainer, shuffled_batches
from models.common.metrics import caption_recall
from models.common.pictures import ImageCNN, PictureFinetuning, cnn_input
from models.common.text import tokenize  # noqa: F401
from pipeline.registry import register_trainer

torch = lazy("torch")
_nets = lazy("models.vase.nets")
_losses = lazy("models.common.losses")
_NETS = ("DavenetEncoder", "ImageEncoder", "CNNImageEncoder", "TextEncoder", "VASEModel")


def __getattr__(name: str) -> Any:
    """The networks live in models.vase.nets (imported with torch, on first use)."""
    if name in _NETS:
        return getattr(_nets, name)
    raise AttributeError(f"module 'models.vase.trainer' has no attribute {name!r}")

log = logging.getLogger(__name__)



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


def encode_captions(captions: Sequence[str], vocab: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids `[B, L]` (0-padded, <start> ... <end>) and lengths `[B]`."""
    ids, lengths = encode_texts(captions, vocab)
    return torch.from_numpy(ids), torch.from_numpy(lengths)


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


@register_trainer
class VASETrainer(PictureFinetuning, EpochTrainer):
    """VASE: trains on paired spoken captions and images (and transcripts), selects by validation rsum."""

    name = "vase"
    VERSION = 1
    Config = VASEConfig
    tasks = ("pairs",)  # captions grouped by the image they describe, not labelled clips
    score_name = "rsum"

    def __init__(self, config: Any = None, device: str = "auto", cnn: ImageCNN | None = None) -> None:
        super().__init__(config, device)
        self.cnn = cnn
        self.model: Any = None
        self.vocab: list[str] = []

    # -- the contract ------------------------------------------------------------------------------

    def views(self) -> list[View]:
        cfg = self.config
        views = [View("audio", "audio", "sequence", max_len=cfg.max_frames, dtype="float32"),
                 View("visual", "visual", "vector", per="group", dtype="float32")]
        if cfg.streams == 3:
            views.append(View("text", "text", "tokens", min_count=cfg.min_word_count))
        return views

    def needs_media(self, clip: Any) -> str | None:
        if self.config.finetune_cnn and "image" not in clip.media:
            return "no raw picture (finetune_cnn trains the CNN on the dataset's images)"
        return None

    def group_outputs(self) -> frozenset[str]:
        return frozenset({"image"})

    def describe(self) -> dict[str, Any]:
        if self.cnn is None:
            return {}
        return {"finetune_cnn": {"implementation": self.cnn.name, "crop_size": self.cnn.crop_size,
                                 "resize_size": self._picture_reader.resize_size if self._picture_reader else None,
                                 "augment": "random resized crop (scale 0.08-1) + horizontal flip"}}

    @staticmethod
    def captions(items: Items) -> CaptionData:
        """Items as the model reads them: captions, the image (features) each describes, transcripts."""
        assert items.group_of is not None
        text = items.data.get("text")
        return CaptionData(items.ids, items.group_of, np.asarray(items.data["visual"], dtype=np.float32),
                           items.data["audio"], list(text.texts) if text is not None else [""] * len(items),
                           items.groups, items.data.get("pictures"))

    def fit(self, train: Items, val: Items | None = None, **hooks: Any) -> "VASETrainer":
        if self.config.streams == 3 and self.model is None:
            self.vocab = list(train.data["text"].vocab)
        return self.fit_pairs(self.captions(train), self.captions(val) if val is not None else None,
                              on_epoch=hooks.get("on_epoch"))

    def embed(self, items: Items) -> dict[str, np.ndarray]:
        return self.encode(self.captions(items))

    def start_from(self, state: dict[str, Any], train: Items) -> "VASETrainer":
        """Stage 2: another run's weights (stage 1's best), fresh optimizer."""
        self.build(np.asarray(train.data["visual"]).shape[1], state.get("vocab", []))
        return self.init_from(state)

    # -- building and state ------------------------------------------------------------------------

    def build(self, image_dim: int, vocab: Sequence[str] = ()) -> "VASETrainer":
        """A freshly initialised model (seeded) and its optimizer; with `finetune_cnn` the CNN starts from its own weights."""
        if self.config.finetune_cnn and self.cnn is None:
            raise ValueError("finetune_cnn trains the image CNN end to end: pass the CNN (cnn=ImageCNN(...)); the "
                             "pipeline takes it from the visual stage")
        cnn = self.cnn.build() if self.config.finetune_cnn and self.cnn is not None else None
        if cnn is not None:
            image_dim = self.cnn.dim
        torch.manual_seed(self.config.seed)
        self.vocab = list(vocab)
        self.model = _nets.VASEModel(self.config, image_dim, self.vocab, cnn).to(self.torch_device)
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

    def build_state(self) -> dict[str, Any]:
        assert self.model is not None
        return {"vocab": list(self.vocab), "image_dim": int(self.model.image.fc.in_features)}

    def rebuild(self, state: dict[str, Any]) -> None:
        self.build(int(state["image_dim"]), state.get("vocab", []))

    # -- training ----------------------------------------------------------------------------------

    def _frames(self, data: CaptionData, idx: np.ndarray) -> torch.Tensor:
        x = np.asarray(data.audio(idx), dtype=np.float32)[:, :self.config.max_frames]
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_device)

    @property
    def finetuning(self) -> bool:
        """Whether the image branch runs the CNN on raw pictures (else it reads stored features)."""
        return isinstance(self.model.image if self.model is not None else None, _nets.CNNImageEncoder)

    def _pictures(self, data: CaptionData, image_idx: np.ndarray, train: bool) -> torch.Tensor:
        """Normalised CNN input `[B, 3, crop, crop]` (`models.common.pictures.cnn_input`: augmented in training)."""
        assert self.cnn is not None
        if data.pictures is None:
            raise ValueError("finetune_cnn runs the CNN on raw pictures, and these captions come without them "
                             "(CaptionData.pictures is None)")
        return cnn_input(self.cnn, data.pictures(image_idx), int(self.config.crop_size or self.cnn.crop_size), train,
                         self.torch_device)

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
        crit = _losses.ContrastiveLoss(cfg.margin, cfg.max_violation)
        views = [v.float() for v in views]
        vse = crit(views[0], views[1])
        if len(views) == 3:
            vse = vse + crit(views[0], views[2]) + crit(views[1], views[2])
        rec = _losses.reconstruction_loss(views, cfg.smoothing, cfg.rec_rounds) if cfg.rec_rounds else torch.zeros(())
        return vse + cfg.rec_weight * rec, float(vse.detach()), float(rec.detach())

    def fit_pairs(self, train: CaptionData, val: CaptionData | None,
                  on_epoch: Callable[["VASETrainer", bool], None] | None = None) -> "VASETrainer":
        """Train the remaining epochs (all of them, unless resumed), validating after each one."""
        cfg = self.config
        if self.model is None:
            vocab = self.vocab or (build_vocab(train.texts, cfg.min_word_count) if cfg.streams == 3 else [])
            self.build(train.images.shape[1], vocab)
        if len(train) < 2:
            raise ValueError(f"needs >= 2 training captions, has {len(train)}")
        return self.run_epochs(train, val, on_epoch)  # type: ignore[return-value]

    def lr_at(self, epoch: int) -> float:
        return self.config.lr * 0.1 ** (epoch // self.config.lr_update)

    def batches(self, train: CaptionData, epoch: int) -> Any:
        return shuffled_batches(len(train), self.config.batch_size, self.config.seed, epoch)

    def batch_loss(self, train: CaptionData, idx: np.ndarray, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        views = self._forward(train, idx)
        with torch.autocast(self.torch_device.type, enabled=False):  # the loss in float32, as the views are cast
            total, vse, rec = self.loss(views)
        return total, {"loss": float(total.detach()), "vse_loss": vse, "rec_loss": rec}

    def validate(self, val: CaptionData) -> dict[str, float]:
        m = self.evaluate(val)
        return {"val_rsum": m["rsum"], **{f"val_{d}_r@{k}": m[d][f"r@{k}"] for d in ("image2speech", "speech2image")
                                         for k in (1, 5, 10)}}

    # -- embedding and evaluation ------------------------------------------------------------------

    def encode(self, data: CaptionData, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Embeddings of a split: `image` per image, `speech` (and `text`) per caption."""
        assert self.model is not None
        bs = batch_size or max(self.config.batch_size, 64)
        m, empty = self.model, (0, self.config.embed_size)

        def text(idx: np.ndarray) -> "torch.Tensor":
            ids, lengths = encode_captions([data.texts[i] for i in idx], self.vocab)
            return m.text(ids.to(self.torch_device), lengths)

        out = {"image": self.infer(len(data.images), bs, lambda i: m.image(self._image_input(data, i, train=False)),
                                   empty),
               "speech": self.infer(len(data), bs, lambda i: m.speech(self._frames(data, i)), empty)}
        if m.text is not None and len(data):
            out["text"] = self.infer(len(data), bs, text, empty)
        return out

    def evaluate(self, data: CaptionData, folds: int = 1) -> dict[str, Any]:
        """Recall@1/5/10, medr, meanr both ways (image <-> speech; and image <-> text with three streams)."""
        return caption_recall(self.encode(data), data.image_of, folds=folds)
