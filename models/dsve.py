"""DSVE-loc (Engilberge et al., CVPR 2018, technicolor-research/dsve-loc): a semantic-visual embedding of images and
captions whose image side can point at what a phrase names.

- image: the ResNet-152 `layer4` map of the picture (a `resnet152` feature store, `[h, w, 2048]`) -> 1x1 conv
  2048 -> 2400 -> WELDON pooling (the mean of the 15 highest plus the 15 lowest values per channel) ->
  dropout 0.5 -> linear 2400 -> 2400 -> l2;
- text: the first sentence's tokens (models/text.py) looked up in fixed word vectors (skip-thoughts' 620-d
  `utable.npy`, or a word2vec / GloVe file; UNK for unknown words) -> a 4-layer SRU 620 -> 2400 (dropout 0.25,
  tanh, skip term) -> its output at the last word -> l2;
- loss: the hard-negative contrastive loss (VSE++ max violation, margin 0.2, summed over the batch), Adam 1e-3,
  batches of 160 captions with their images; lr x `lr_gamma` at each of `lr_milestones` (the reference's
  MultiStepLR stepped with the epoch: epoch t trains at lr * 0.5^#{milestones <= t - 1});
- phases: the image head trains from the first epoch, the SRU from `text_epoch` (2: the reference frees it after
  epoch 1); model selection on the validation rsum (R@1+5+10 both ways).

The localization side (models/localization.py): the 1x1 conv's output (`act_maps`) and the linear head's weight
(`fc_weight`) turn a phrase embedding into a heatmap over the image: the pointing game and the semantic
segmentation of the `grounding` task.

Deviations from the reference, on purpose or by necessity:
- the reference initialises the 1x1 conv from its WELDON ImageNet-classification model and trains only the linear
  head at first; that model is not public in a loadable form here, so the 1x1 conv trains with the head from the
  first epoch;
- images come from a feature store (the frozen trunk, one fixed square resize, `resize: whole`) instead of a random
  resized crop 256 + flip per epoch; the trunk's layer3/layer4 fine-tuning phase (the reference's `fepoch` 8) is
  not implemented;
- the tokenizer needs no NLTK download (models/text.py says how it differs from punkt + word_tokenize);
- `word_vectors: random:SEED` (tests, the offline demo) gives fixed random vectors to the training captions' words:
  the run says so, and such numbers are not the paper's.
"""
from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from pipeline.registry import register_evaluator, register_trainer

from ._lazy import lazy
from .items import Items, View
from .loop import EpochTrainer, autocast, shuffled_batches
from .metrics import caption_recall

torch = lazy("torch")
_nets = lazy("models.dsve_nets")
_losses = lazy("models.losses")
_text = lazy("models.text")

log = logging.getLogger(__name__)


@dataclass
class DSVEConfig:
    word_vectors: str = "random:0"  # skip-thoughts dir (utable.npy + dictionary.txt), word2vec/GloVe file, random:SEED
    word_dim: int = 620  # random vectors' size (a file's vectors bring their own)
    min_word_count: int = 1  # random vectors: words seen this often in the training captions (others are UNK)
    map_channels: int = 2400
    embed_size: int = 2400
    sru_layers: int = 4
    n_max: float = 15  # WELDON regions kept per channel (max and min)
    dropout: float = 0.5
    text_dropout: float = 0.25
    margin: float = 0.2
    max_violation: bool = True  # the hardest negative of the batch only (VSE++, the reference); false: every negative
    epochs: int = 60
    batch_size: int = 160
    lr: float = 1e-3
    lr_gamma: float = 0.5
    lr_milestones: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6])
    text_epoch: int = 2  # the SRU is frozen before this epoch
    eval_folds: int = 1  # test recall averaged over this many slices of the test images (5: COCO 1k); 5k: whole
    pointing_nmax: int = 180  # phrase coordinates a heatmap sums (the pointing game)
    seed: int = 0

    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {"max_violation": True}

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 2, "batch_size must be >= 2"),
                  (self.lr > 0, "lr must be > 0"), (self.n_max > 0, "n_max must be > 0"),
                  (0 <= self.dropout < 1 and 0 <= self.text_dropout < 1, "dropouts must be in [0, 1)"),
                  (self.sru_layers >= 1, "sru_layers must be >= 1"), (self.eval_folds >= 1, "eval_folds must be >= 1"),
                  (min(self.map_channels, self.embed_size, self.word_dim) >= 1, "sizes must be >= 1"),
                  (self.pointing_nmax >= 1, "pointing_nmax must be >= 1"),
                  (list(self.lr_milestones) == sorted(self.lr_milestones), "lr_milestones must be increasing")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@register_trainer
class DSVETrainer(EpochTrainer):
    """DSVE-loc: images' ResNet-152 maps and written captions in one space; WELDON heatmaps point at phrases."""

    name = "dsve"
    VERSION = 1
    Config = DSVEConfig
    tasks = ("grounding", "pairs")  # grounding where phrases carry boxes or images COCO instances
    score_name = "rsum"

    def __init__(self, config: Any = None, device: str = "auto") -> None:
        super().__init__(config, device)
        self.vectors: Any = None  # models.text.WordVectors
        self.in_channels = 0

    def views(self) -> list[View]:
        return [View("image", "visual", "map", per="group", dtype="float32"), View("text", "text", "tokens")]

    def group_outputs(self) -> frozenset[str]:
        return frozenset({"image"})

    def describe(self) -> dict[str, Any]:
        if self.vectors is None:
            return {}
        return {"word_vectors": {"spec": self.config.word_vectors, "words": len(self.vectors.words),
                                 "dim": int(self.vectors.dim), "digest": self.vectors.digest,
                                 "pretrained": not str(self.config.word_vectors).startswith("random:")}}

    # -- building and state ------------------------------------------------------------------------

    def load_vectors(self, texts: Sequence[str] = (), words: Sequence[str] | None = None) -> Any:
        """The word vectors: the configured file, or random ones for `words` (or the frequent words of `texts`)."""
        cfg = self.config
        if str(cfg.word_vectors).startswith("random:") and words is None:
            from collections import Counter

            counts = Counter(w for t in texts for w in _text.sentence_tokens(t))
            words = sorted(w for w, n in counts.items() if n >= cfg.min_word_count)
        return _text.load_word_vectors(cfg.word_vectors, vocabulary=list(words or ()), dim=cfg.word_dim)

    def build(self, in_channels: int, vectors: Any) -> "DSVETrainer":
        """A freshly initialised model (seeded) on `in_channels`-channel maps and `vectors`, and its optimizer."""
        cfg = self.config
        self.in_channels, self.vectors = int(in_channels), vectors
        torch.manual_seed(cfg.seed)
        self.model = _nets.DSVEModel(in_channels, cfg.map_channels, cfg.embed_size, cfg.n_max, cfg.dropout,
                                     int(vectors.dim), cfg.sru_layers, cfg.text_dropout).to(self.torch_device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        return self

    def state_dict(self) -> dict[str, Any]:
        assert self.model is not None and self.vectors is not None
        random = str(self.config.word_vectors).startswith("random:")
        return {"model": self.best_state or self.model.state_dict(), "in_channels": self.in_channels,
                "words": list(self.vectors.words) if random else [], "vectors_digest": self.vectors.digest,
                "best_epoch": int(self.best_epoch), "best_rsum": float(self.best_score)}

    def load_state_dict(self, state: dict[str, Any]) -> "DSVETrainer":
        random = str(self.config.word_vectors).startswith("random:")
        vectors = self.load_vectors(words=[w for w in state["words"] if w != "UNK"] if random else None)
        if vectors.digest != state["vectors_digest"]:
            raise ValueError(f"the word vectors '{self.config.word_vectors}' differ from those this model was trained "
                             f"with (digest {vectors.digest[:12]} != {str(state['vectors_digest'])[:12]}): restore that file")
        self.build(int(state["in_channels"]), vectors)
        self.model.load_state_dict(state["model"])
        self.best_epoch, self.best_score = int(state.get("best_epoch", -1)), float(state.get("best_rsum", -math.inf))
        return self

    # -- inputs ------------------------------------------------------------------------------------

    def _maps(self, items: Items, groups: np.ndarray) -> "torch.Tensor":
        x = np.ascontiguousarray(items.data["image"][groups], dtype=np.float32)
        return torch.from_numpy(x).to(self.torch_device)

    def words(self, texts: Sequence[str]) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Word vectors `[B, L, D]` (zero-padded) and lengths `[B]` of texts (at least one row each)."""
        rows = [self.vectors.encode(t) for t in texts]
        rows = [r if len(r) else np.zeros((1, self.vectors.dim), np.float32) for r in rows]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        out = np.zeros((len(rows), int(lengths.max()) if len(rows) else 1, self.vectors.dim), np.float32)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return torch.from_numpy(out).to(self.torch_device), torch.from_numpy(lengths).to(self.torch_device)

    @staticmethod
    def _texts(items: Items, idx: np.ndarray) -> list[str]:
        texts = items.data["text"].texts
        return [texts[int(i)] for i in idx]

    # -- training ----------------------------------------------------------------------------------

    def fit(self, train: Items, val: Items | None = None, **hooks: Any) -> "DSVETrainer":
        if len(train) < 2:
            raise ValueError(f"needs >= 2 training captions, has {len(train)}")
        if self.model is None:
            maps = train.data["image"]
            if maps.ndim != 4:
                raise ValueError(f"the image view must hold [H, W, C] maps (resnet152 layer4), got {maps.shape[1:]}")
            self.build(maps.shape[-1], self.load_vectors(train.data["text"].texts))
        return self.run_epochs(train, val, hooks.get("on_epoch"))  # type: ignore[return-value]

    def lr_at(self, epoch: int) -> float:
        return self.config.lr * self.config.lr_gamma ** bisect.bisect_right(list(self.config.lr_milestones), epoch - 1)

    def batches(self, train: Items, epoch: int) -> Any:
        return shuffled_batches(len(train), self.config.batch_size, self.config.seed, epoch)

    def batch_loss(self, train: Items, idx: np.ndarray, epoch: int) -> tuple["torch.Tensor", dict[str, float]]:
        assert self.model is not None and train.group_of is not None
        image = self.model.image(self._maps(train, train.group_of[idx]))
        words, lengths = self.words(self._texts(train, idx))
        if epoch < self.config.text_epoch:
            with torch.no_grad():  # the SRU is frozen in the first phase
                caption = self.model.caption(words, lengths)
        else:
            caption = self.model.caption(words, lengths)
        with torch.autocast(self.torch_device.type, enabled=False):
            loss = _losses.ContrastiveLoss(self.config.margin, self.config.max_violation)(image.float(), caption.float())
        return loss, {"loss": float(loss.detach())}

    def validate(self, val: Items) -> dict[str, float]:
        m = self.evaluate(val)
        return {"val_rsum": m["rsum"], **{f"val_{d}_r@{k}": m[d][f"r@{k}"] for d in ("image2text", "text2image")
                                         for k in (1, 5, 10)}}

    # -- embedding ---------------------------------------------------------------------------------

    def embed(self, items: Items, bs: int = 128) -> dict[str, np.ndarray]:
        """`image` per image (group) and `text` per caption, l2-normalised."""
        assert items.group_of is not None
        images = self.image_embeddings(items, np.arange(len(items.groups)), bs)
        return {"image": images, "text": self.text_embeddings(self._texts(items, np.arange(len(items))), bs)}

    def image_embeddings(self, items: Items, groups: np.ndarray, bs: int = 128) -> np.ndarray:
        """Embeddings `[n, embed]` of the images `groups` of the items."""
        assert self.model is not None
        self.model.eval()
        out = []
        with torch.inference_mode(), autocast(self.torch_device):
            for a in range(0, len(groups), bs):
                out.append(self.model.image(self._maps(items, groups[a:a + bs])).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.embed_size), np.float32)

    def text_embeddings(self, texts: Sequence[str], bs: int = 256) -> np.ndarray:
        """Embeddings `[n, embed]` of texts (captions, phrases, category names)."""
        assert self.model is not None
        self.model.eval()
        out = []
        with torch.inference_mode(), autocast(self.torch_device):
            for a in range(0, len(texts), bs):
                out.append(self.model.caption(*self.words(texts[a:a + bs])).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.embed_size), np.float32)

    def act_maps(self, items: Items, groups: np.ndarray) -> np.ndarray:
        """The 1x1 conv's output `[n, map_channels, h, w]` for the images `groups` (the heatmaps' source)."""
        assert self.model is not None
        self.model.eval()
        with torch.inference_mode():
            return self.model.act_map(self._maps(items, groups)).float().cpu().numpy()

    def fc_weight(self) -> np.ndarray:
        """The image head's linear weight `[embed, map_channels]`."""
        assert self.model is not None
        return self.model.fc.weight.detach().float().cpu().numpy()

    def evaluate(self, items: Items, folds: int = 1) -> dict[str, Any]:
        """Recall@1/5/10, medr, meanr both ways (image <-> text)."""
        assert items.group_of is not None
        return caption_recall(self.embed(items), items.group_of, folds=folds)


@dataclass
class PointingConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    point: Literal["corner", "center"] = "corner"  # the heatmap cell's top-left corner (the reference) or centre
    folds: int = 1  # Recall@K averaged over this many slices of the test images
    model_dataset: str | None = None  # apply the models its train stages learned on this other dataset (COCO -> VG)

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or self.point not in ("corner", "center") or self.folds < 1:
            raise ValueError(f"need ks >= 1, point corner|center and folds >= 1, got {self.ks}, {self.point!r}, "
                             f"{self.folds}")


@register_evaluator
class Pointing:
    """The pointing game (and segmentation mAP, Recall@K) of grounding runs' phrase heatmaps, beside the
    centre baseline; sample heatmap pictures."""

    name: ClassVar[str] = "pointing"
    VERSION: ClassVar[int] = 1
    Config: ClassVar[type] = PointingConfig
    reads: ClassVar[None] = None
    task: ClassVar[str] = "grounding"
