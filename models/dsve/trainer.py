"""DSVE-loc (Engilberge et al., CVPR 2018, technicolor-research/dsve-loc): a semantic-visual embedding of images and
captions whose image side can point at what a phrase names.

- image: the ResNet-152 `layer4` map of the picture (a `resnet152` feature store, `[h, w, 2048]`) -> 1x1 conv
  2048 -> 2400 -> WELDON pooling (the mean of the 15 highest plus the 15 lowest values per channel) ->
  dropout 0.5 -> linear 2400 -> 2400 -> l2;
- text: the first sentence's tokens (models/common/text.py) looked up in fixed word vectors (skip-thoughts' 620-d
  `utable.npy`, or a word2vec / GloVe file; UNK for unknown words) -> a 4-layer SRU 620 -> 2400 (dropout 0.25,
  tanh, skip term) -> its output at the last word -> l2;
- loss: the hard-negative contrastive loss (VSE++ max violation, margin 0.2, summed over the batch), Adam 1e-3,
  batches of 160 captions with their images; lr x `lr_gamma` at each of `lr_milestones` (the reference's
  MultiStepLR stepped with the epoch: epoch t trains at lr * 0.5^#{milestones <= t - 1});
- phases: the image head trains from the first epoch, the SRU from `text_epoch` (2: the reference frees it after
  epoch 1); model selection on the validation rsum (R@1+5+10 both ways).

The localization side (models/dsve/heatmaps.py): the 1x1 conv's output (`act_maps`) and the linear head's weight
(`fc_weight`) turn a phrase embedding into a heatmap over the image: the pointing game and the semantic
segmentation of the `grounding` task.

Deviations from the reference, on purpose or by necessity:
- the reference initialises the 1x1 conv from its WELDON ImageNet-classification model and trains only the linear
  head at first; that model is not public in a loadable form here, so the 1x1 conv trains with the head from the
  first epoch;
- images come from a feature store (the frozen trunk, one fixed square resize, `resize: whole`) instead of a random
  resized crop 256 + flip per epoch; the trunk's layer3/layer4 fine-tuning phase (the reference's `fepoch` 8) is
  not implemented;
- the tokenizer needs no NLTK download (models/common/text.py says how it differs from punkt + word_tokenize);
- `word_vectors: random:SEED` (tests, the offline demo) gives fixed random vectors to the training captions' words:
  the run says so, and such numbers are not the paper's.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from models.common.items import Items, View
from models.common.lazy import lazy
from models.common.loop import EpochTrainer, shuffled_batches
from models.common.metrics import caption_recall
from models.common.pictures import TrunkPictures
from pipeline.registry import register_evaluator, register_trainer

torch = lazy("torch")
_nets = lazy("models.dsve.nets")
_losses = lazy("models.common.losses")
_text = lazy("models.common.text")

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
    finetune_epoch: int | None = None  # from this epoch on ResNet-152's layer3 and layer4 train too, on raw pictures
    # (random resized crops + flips; the reference's fepoch, 8); None: the stored maps throughout
    eval_folds: int = 1  # test recall averaged over this many slices of the test images (5: COCO 1k); 5k: whole
    pointing_nmax: int = 180  # phrase coordinates a heatmap sums (the pointing game)
    seed: int = 0

    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {"max_violation": True, "finetune_epoch": None}

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 2, "batch_size must be >= 2"),
                  (self.lr > 0, "lr must be > 0"), (self.n_max > 0, "n_max must be > 0"),
                  (0 <= self.dropout < 1 and 0 <= self.text_dropout < 1, "dropouts must be in [0, 1)"),
                  (self.sru_layers >= 1, "sru_layers must be >= 1"), (self.eval_folds >= 1, "eval_folds must be >= 1"),
                  (min(self.map_channels, self.embed_size, self.word_dim) >= 1, "sizes must be >= 1"),
                  (self.pointing_nmax >= 1, "pointing_nmax must be >= 1"),
                  (self.finetune_epoch is None or self.finetune_epoch >= 0, "finetune_epoch must be >= 0 (or null)"),
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
        self.vectors: Any = None  # models.common.text.WordVectors
        self.in_channels = 0
        self.extractor: Any = None  # the image view's resnet152 extractor, when its trunk is fine-tuned
        self.trunk_live = False  # the model's trunk weights differ from the stored maps' (a fine-tuned epoch is in them)

    @classmethod
    def create(cls, config: Any, device: str, stages: dict[str, dict[str, Any]], restoring: bool = False) -> "DSVETrainer":
        """A trainer for a run; with `finetune_epoch` it also runs the image stage's ResNet-152 on raw pictures
        (restoring a saved run: its architecture only, the weights come from the run's model)."""
        trainer = cls(config, device)
        if trainer.config.finetune_epoch is not None:
            stage = stages["image"]
            if stage["implementation"] != "resnet152":
                raise ValueError(f"finetune_epoch trains ResNet-152's layer3 and layer4, and the image view reads stage "
                                 f"'{stage['stage']}' ({stage['implementation']}): bind it to a resnet152 stage")
            from extractors.resnet152 import ResNet152 as ext

            params = {**stage["params"], "weights": "random:0"} if restoring else dict(stage["params"])
            trainer.extractor = ext(ext.Config(**params))
        return trainer

    def needs_media(self, clip: Any) -> str | None:
        if self.extractor is not None and "image" not in clip.media:
            return "no raw picture (finetune_epoch trains ResNet-152 on the dataset's images)"
        return None

    def media_data(self, items: Items) -> dict[str, Any]:
        """With `finetune_epoch`: each group's raw picture (its first item's), read as the image stage reads it."""
        if self.extractor is None:
            return {}
        return {"pictures": TrunkPictures(self.extractor, [items.media[int(i)] for i in items.group_firsts()])}

    def views(self) -> list[View]:
        return [View("image", "visual", "map", per="group", dtype="float32"), View("text", "text", "tokens")]

    def group_outputs(self) -> frozenset[str]:
        return frozenset({"image"})

    def describe(self) -> dict[str, Any]:
        spec = str(self.config.word_vectors)
        out: dict[str, Any] = {"word_vectors": {"spec": spec, "pretrained": not spec.startswith("random:")}}
        if self.vectors is not None:
            out["word_vectors"].update(words=len(self.vectors.words), dim=int(self.vectors.dim), digest=self.vectors.digest)
        if self.extractor is not None:
            out["finetune"] = {"from_epoch": self.config.finetune_epoch, "trained": "layer3, layer4",
                               "augment": "random resized crop (scale 0.08-1) + horizontal flip"}
        return out

    # -- building and state ------------------------------------------------------------------------

    def load_vectors(self, texts: Sequence[str] = ()) -> Any:
        """The word vectors: the configured file, or random ones for the frequent words of `texts`."""
        cfg = self.config
        return _text.training_vectors(cfg.word_vectors, texts, cfg.word_dim, cfg.min_word_count)

    def build(self, in_channels: int, vectors: Any) -> "DSVETrainer":
        """A freshly initialised model (seeded) on `in_channels`-channel maps and `vectors`, and its optimizer."""
        cfg = self.config
        self.in_channels, self.vectors = int(in_channels), vectors
        trunk = _nets.Trunk(self.extractor.network()) if self.extractor is not None else None
        torch.manual_seed(cfg.seed)
        self.model = _nets.DSVEModel(in_channels, cfg.map_channels, cfg.embed_size, cfg.n_max, cfg.dropout,
                                     int(vectors.dim), cfg.sru_layers, cfg.text_dropout, trunk).to(self.torch_device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        return self

    def build_state(self) -> dict[str, Any]:
        assert self.vectors is not None
        ft = self.config.finetune_epoch
        live = (ft is not None and self.best_epoch >= ft) if self.best_state is not None else self.trunk_live
        return {"in_channels": self.in_channels, "trunk_live": live,
                **_text.vectors_state(self.vectors, self.config.word_vectors)}

    def rebuild(self, state: dict[str, Any]) -> None:
        self.build(int(state["in_channels"]), _text.restore_vectors(self.config.word_vectors, state, self.config.word_dim))
        self.trunk_live = bool(state.get("trunk_live", False))

    def resume(self, ckpt: dict[str, Any]) -> "DSVETrainer":
        super().resume(ckpt)
        ft = self.config.finetune_epoch
        self.trunk_live = ft is not None and self.epoch >= ft  # the current weights, not the best ones
        return self

    # -- inputs ------------------------------------------------------------------------------------

    def _maps(self, items: Items, groups: np.ndarray, train: bool = False) -> "torch.Tensor":
        """`[B, h, w, 2048]` maps of the images `groups`: the stored ones, or, once the trunk trains (and after),
        the trunk's on the raw pictures (random resized crop + flip in training, the store's resize otherwise)."""
        if not (train and self._tuning) and not self.trunk_live:
            x = np.ascontiguousarray(items.data["image"][groups], dtype=np.float32)
            return torch.from_numpy(x).to(self.torch_device)
        pics = items.data["pictures"]
        x = pics.augmented(groups, self.extractor.config.image_size) if train else pics.stored(groups)
        return self.model.trunk(self._normalise(x))

    def _normalise(self, x: "torch.Tensor") -> "torch.Tensor":
        """uint8 `[B, 3, s, s]` -> float, ImageNet mean/std (the extractor's), on the device."""
        t = self.extractor.preprocessing
        x = x.to(self.torch_device).float().div_(255.0)
        return (x - torch.tensor(t.mean, device=x.device).view(1, 3, 1, 1)) / torch.tensor(t.std, device=x.device).view(1, 3, 1, 1)

    def picture_embeddings(self, pictures: np.ndarray) -> np.ndarray:
        """Embeddings of uint8 `[B, s, s, 3]` pictures (the extractor's input) through the fine-tuned trunk."""
        assert self.model is not None and self.model.trunk is not None
        self.model.eval()
        with torch.inference_mode():
            x = self._normalise(torch.from_numpy(np.ascontiguousarray(pictures)).permute(0, 3, 1, 2))
            return self.model.image(self.model.trunk(x)).float().cpu().numpy()

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

    _tuning = False  # the epoch being trained runs the trunk

    def fit(self, train: Items, val: Items | None = None, **hooks: Any) -> "DSVETrainer":
        if len(train) < 2:
            raise ValueError(f"needs >= 2 training captions, has {len(train)}")
        if self.model is None:
            maps = train.data["image"]
            if maps.ndim != 4:
                raise ValueError(f"the image view must hold [H, W, C] maps (resnet152 layer4), got {maps.shape[1:]}")
            self.build(maps.shape[-1], self.load_vectors(train.data["text"].texts))
        self.run_epochs(train, val, hooks.get("on_epoch"))
        self._tuning = False
        ft = self.config.finetune_epoch
        if self.best_state is not None:  # the kept model: its trunk is trained when its epoch is a fine-tuning one
            self.trunk_live = ft is not None and self.best_epoch >= ft
        return self

    def lr_at(self, epoch: int) -> float:
        return self.config.lr * self.config.lr_gamma ** bisect.bisect_right(list(self.config.lr_milestones), epoch - 1)

    def batches(self, train: Items, epoch: int) -> Any:
        return shuffled_batches(len(train), self.config.batch_size, self.config.seed, epoch)

    def batch_loss(self, train: Items, idx: np.ndarray, epoch: int) -> tuple["torch.Tensor", dict[str, float]]:
        assert self.model is not None and train.group_of is not None
        ft = self.config.finetune_epoch
        self._tuning = ft is not None and epoch >= ft
        self.trunk_live = self.trunk_live or self._tuning  # validation after this epoch reads the trunk too
        image = self.model.image(self._maps(train, train.group_of[idx], train=True))
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
        m = self.model
        return self.infer(len(groups), bs, lambda i: m.image(self._maps(items, groups[i])), (0, self.config.embed_size))

    def text_embeddings(self, texts: Sequence[str], bs: int = 256) -> np.ndarray:
        """Embeddings `[n, embed]` of texts (captions, phrases, category names)."""
        assert self.model is not None
        m = self.model
        return self.infer(len(texts), bs, lambda i: m.caption(*self.words([texts[int(k)] for k in i])),
                          (0, self.config.embed_size))

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
