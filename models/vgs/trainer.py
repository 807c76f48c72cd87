"""VGS (Khorrami & Räsänen, Interspeech 2021): visually grounded speech models with cross-modal attention,
`model: cnnatt | cnn0` (the reference's CNNatt and CNN0, khazarkhorrami/VGS_alignment).

- speech: the `vgs` log-mel preset, the first `max_frames` (512) frames x 40, zero-padded on the left as
  the reference; Conv1D 128 k5 -> 256 k11 -> pool -> 256 k17 -> pool -> 512 k17 -> pool -> 512 k17 (ReLU,
  dropout 0.3, batch norm; max pool 3 stride 2) -> A `[64, 512]`;
- image: VGG16 `block5_conv3` `[14, 14, 512]`: batch norm -> Conv2D 512 3x3 linear -> dropout -> batch norm
  -> I `[196, 512]`;
- `cnnatt`: S = A·Iᵀ; softmax and sigmoid-dense attentions both ways; 1536-d vectors, l2-normalised, cosine.
  `cnn0`: dense 512 + l2 per branch, the matchmap of cosines, its mean.
- loss: the reference's triplet loss, margin 0.1, summed over each batch of triplets: per caption, its image
  (Sp), a wrong image (Si) and a wrong caption (Sc) from two random permutations of the training items:
  max(0, Sc - Sp + m) + max(0, Si - Sp + m). Adam 1e-4 (Keras's epsilon 1e-7), 40 triplets per batch.
- model selection: after each epoch the validation split is ranked (full ranking, R@10 both ways).

Retrieval embeddings, as the reference's recall: the mean over frames of A and over pixels of I (CNN0: of
the projected rows), l2-normalised. For `localization` runs, `av_tensors` gives each test utterance's S
with its own image, `[64, 196]` (CNN0: the cosine matchmap).

Deviations from the reference: the image branch of CNNatt begins with batch norm as CNN0's does (the
issue's architecture; the reference's models/CNNatt.py has none there); torchvision's ImageNet VGG16
and its normalisation stand in for Keras's caffe-style VGG16; a wrong image or caption may be the right
one when a permutation maps an item to one of its own group (the reference has the same chance).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from models.common.items import Items, View
from models.common.lazy import lazy
from models.common.loop import EpochTrainer
from models.common.metrics import caption_recall
from pipeline.registry import register_trainer

torch = lazy("torch")
_nets = lazy("models.vgs.nets")

log = logging.getLogger(__name__)


@dataclass
class VGSConfig:
    model: Literal["cnnatt", "cnn0"] = "cnnatt"
    max_frames: int = 512  # log-mel frames (10 ms), zero-padded on the left
    margin: float = 0.1
    dropout: float = 0.3
    bn_momentum: float = 0.01  # batch norm's running statistics: the weight of each batch (torch's convention; Keras's
    # momentum 0.99, the reference's, is 0.01). A short run does better with more (0.3): evaluation uses these
    # statistics, and at 0.01 they lag ~100 batches behind a network that is still changing fast (docs/vgs.md)
    width: float = 1.0  # speech channel multiplier (1.0 = the reference's 128/256/256/512/512)
    epochs: int = 200
    batch_size: int = 40  # triplets per batch
    lr: float = 1e-4
    seed: int = 0
    select: Literal["loss", "recall"] = "loss"  # keep the epoch of the lowest validation loss (the reference's
    # save_best_loss) or of the best validation R@10 (both ways, averaged)
    sampled_recall: bool = True  # also the reference's Recall@10 of 100 trials of 1000 items drawn with replacement

    # params added after runs were trained, at the value that trains what those runs hold: left out of the run key
    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {"bn_momentum": 0.01}

    def __post_init__(self) -> None:
        checks = [(self.model in ("cnnatt", "cnn0"), "model must be cnnatt or cnn0"),
                  (self.max_frames >= 8 and self.max_frames % 8 == 0, "max_frames must be a multiple of 8"),
                  (self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 2, "batch_size must be >= 2"),
                  (self.lr > 0, "lr must be > 0"), (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
                  (0 < self.bn_momentum <= 1, "bn_momentum must be in (0, 1]"),
                  (self.width > 0, "width must be > 0"), (self.select in ("loss", "recall"), "select must be loss or recall")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@register_trainer
class VGSTrainer(EpochTrainer):
    """VGS: trains on spoken captions paired with images' VGG16 maps by a triplet loss; selects by val R@10."""

    name = "vgs"
    VERSION = 1
    Config = VGSConfig
    tasks = ("localization", "pairs")  # localization where words carry timings and images object masks

    def __init__(self, config: Any = None, device: str = "auto") -> None:
        super().__init__(config, device)
        self.shape: tuple[int, int, int, int] | None = None  # (n_mels, H, W, C)
        self.score_name = "r10" if self.config.select == "recall" else "neg_loss"  # the loop keeps the highest

    def views(self) -> list[View]:
        return [View("speech", "audio", "sequence", max_len=self.config.max_frames, dtype="float32"),
                View("image", "visual", "map", per="group", dtype="float32")]

    def group_outputs(self) -> frozenset[str]:
        return frozenset({"image"})

    # -- building and state ------------------------------------------------------------------------

    def build(self, shape: tuple[int, int, int, int]) -> "VGSTrainer":
        """A freshly initialised model (seeded) for log-mel of `n_mels` and maps of `[H, W, C]`."""
        cfg = self.config
        self.shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        n_mels, h, w, c = self.shape
        torch.manual_seed(cfg.seed)
        self.model = _nets.VGSModel(cfg.model, n_mels, cfg.max_frames, (h, w), c, cfg.dropout, cfg.width,
                                   cfg.bn_momentum).to(self.torch_device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=1e-7)
        return self

    def build_state(self) -> dict[str, Any]:
        assert self.shape is not None
        return {"shape": list(self.shape)}

    def rebuild(self, state: dict[str, Any]) -> None:
        self.build(tuple(int(s) for s in state["shape"]))  # type: ignore[arg-type]

    # -- inputs ------------------------------------------------------------------------------------

    def _speech(self, items: Items, idx: np.ndarray) -> "torch.Tensor":
        """Log-mel of items `idx`, `[B, max_frames, n_mels]`, zero-padded on the left (the reference's preparX)."""
        seq = items.data["speech"]
        x = seq(idx)
        out = np.zeros_like(x)
        for k, i in enumerate(idx):
            n = int(seq.lengths[int(i)])
            if n:
                out[k, x.shape[1] - n:] = x[k, :n]
        return torch.from_numpy(out).to(self.torch_device)

    def _image(self, items: Items, groups: np.ndarray) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(items.data["image"][groups], dtype=np.float32)).to(self.torch_device)

    # -- training ----------------------------------------------------------------------------------

    def fit(self, train: Items, val: Items | None = None, **hooks: Any) -> "VGSTrainer":
        if len(train) < 2:
            raise ValueError(f"needs >= 2 training captions, has {len(train)}")
        if self.model is None:
            maps = train.data["image"]  # an array, or MapData read on demand (a corpus too big for memory)
            if maps.ndim != 4:
                raise ValueError(f"the image view must hold [H, W, C] maps (VGG16 block5_conv3), got {maps.shape[1:]}")
            self.build((train.data["speech"].dim, *maps.shape[1:]))
        return self.run_epochs(train, val, hooks.get("on_epoch"))  # type: ignore[return-value]

    def batches(self, train: Items, epoch: int) -> Any:
        rng = np.random.default_rng([self.config.seed, epoch + 1])  # epoch -1: validation
        n = len(train)
        order, wrong_image, wrong_caption = rng.permutation(n), rng.permutation(n), rng.permutation(n)
        bs = self.config.batch_size
        for a in range(0, n, bs):
            g = order[a:a + bs]
            if len(g) >= 1:
                yield g, wrong_image[g], wrong_caption[g]

    def batch_loss(self, train: Items, batch: Any, epoch: int) -> tuple["torch.Tensor", dict[str, float]]:
        g, wi, wc = batch
        assert self.model is not None and train.group_of is not None
        m = self.model
        speech = m.speech(self._speech(train, np.concatenate([g, wc])))
        image = m.image(self._image(train, np.concatenate([train.group_of[g], train.group_of[wi]])))
        n = len(g)
        a, a_wrong = speech[:n], speech[n:]
        i, i_wrong = image[:n], image[n:]
        with torch.autocast(self.torch_device.type, enabled=False):
            sp = m.head(a.float(), i.float())
            si = m.head(a.float(), i_wrong.float())
            sc = m.head(a_wrong.float(), i.float())
            loss = score_triplet_loss(sp, si, sc, self.config.margin)
        return loss, {"loss": float(loss.detach()), "pos": float(sp.detach().mean())}

    def validate(self, val: Items) -> dict[str, float]:
        """Validation loss (the triplet loss with impostors drawn as in training, from a fixed generator) and
        R@10 both ways; `select` picks which one keeps the best model."""
        assert self.model is not None
        self.model.eval()
        total, n = 0.0, 0
        with torch.inference_mode():
            for batch in self.batches(val, -1):
                loss, _ = self.batch_loss(val, batch, -1)
                total, n = total + float(loss), n + len(batch[0])
        m = self.evaluate(val)
        return {"val_loss": total / max(n, 1), "val_neg_loss": -total / max(n, 1),
                "val_r10": (m["image2speech"]["r@10"] + m["speech2image"]["r@10"]) / 2, "val_rsum": m["rsum"]}

    # -- embedding ---------------------------------------------------------------------------------

    def embed(self, items: Items, bs: int = 64) -> dict[str, np.ndarray]:
        """`speech` per caption and `image` per image: the branches' means, l2-normalised."""
        assert self.model is not None and items.group_of is not None
        m, norm = self.model, torch.nn.functional.normalize
        empty = (0, m.speech.dim)
        return {"speech": self.infer(len(items), bs, lambda i: norm(
                    m.speech_embedding(m.speech(self._speech(items, i)).float()), dim=-1), empty),
                "image": self.infer(len(items.groups), bs, lambda i: norm(
                    m.image_embedding(m.image(self._image(items, i)).float()), dim=-1), empty)}

    def av_tensors(self, items: Items, bs: int = 64) -> np.ndarray:
        """Each caption's AV tensor with its own image, `[n, T, H*W]` float32 (T = max_frames / 8)."""
        assert self.model is not None and items.group_of is not None
        m, group_of = self.model, items.group_of
        return self.infer(len(items), bs, lambda i: m.head.av_tensor(m.speech(self._speech(items, i)).float(),
                                                                      m.image(self._image(items, group_of[i])).float()),
                          (0, self.config.max_frames // 8, 0))

    def evaluate(self, items: Items) -> dict[str, Any]:
        """Recall@1/5/10, medr, meanr both ways on the items (full ranking of the branch embeddings)."""
        assert items.group_of is not None
        return caption_recall(self.embed(items), items.group_of)


def score_triplet_loss(sp: "torch.Tensor", si: "torch.Tensor", sc: "torch.Tensor", margin: float) -> "torch.Tensor":
    """The reference's triplet loss, summed over the batch: max(0, Sc - Sp + m) + max(0, Si - Sp + m)."""
    return (torch.clamp(sc - sp + margin, min=0) + torch.clamp(si - sp + margin, min=0)).sum()

