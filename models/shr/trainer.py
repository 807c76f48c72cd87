"""See, Hear, and Read (Aytar, Vondrick & Torralba 2017): one network per modality aligned by teacher-student transfer.

Three students (image, sound, text) end in the same shared upper layers: fully connected `hidden` -> `hidden`
(the aligned representation) -> the teacher's classes (1000 ImageNet logits). Trained with image+text and
image+sound pairs only, never text+sound:

- teacher: a pretrained image classifier's class distribution, from a `layer: logits` CNN stage (the `teacher`
  view: softmax(logits / `temperature`));
- loss of a pair (image, other) = `kl_weight` x (1/2 KL(teacher(image) || student(image)) + 1/2 KL(teacher(image)
  || student(other))) + `rank_weight` x the ranking loss between the pair's aligned representations
  (`models.common.losses.ContrastiveLoss`: cosine, `margin`, in-batch negatives, `rank_direction` "a2b" = image rows
  are the queries, the paper's formula, or "both");
- batches alternate between image-text and image-sound pairs (`disjoint: true`: the training images are split in
  two halves, one gives only image-text pairs, the other only image-sound pairs, so no image links a sentence to a
  sound either); Adam `lr`; the model with the best validation rsum over the trained pairs (image<->text,
  image<->sound; never text<->sound, the transfer being measured) is kept.

Students (the paper: AlexNet to pool5 for images, 4-layer 1-D CNNs for sound and text; its channel sizes are not
in the text we could read, these are ours, scaled by `width`):
- image: the image view's stored CNN features (fc7 `[4096]`, or a map `[H, W, C]` averaged over H, W) ->
  Linear(-> `low`) -> ReLU; with `finetune_cnn` the image stage's CNN runs first, trained on the raw pictures
  (random resized crops and flips; the stage's centre crop to embed), as VASE's `finetune_cnn`;
- sound: a `[T, F]` spectrogram (the `spectrogram` preset: 500 x 257 for 5 s; any log-mel preset works), cropped or
  zero-padded to `sound_frames`; four Conv1d over time with F input channels (k 9, stride 2, BatchNorm, ReLU;
  channels 256/512/512/`low`), max over time;
- text: up to `max_words` words of the first sentence, each a fixed word vector (`word_vectors`: word2vec, GloVe,
  skip-thoughts or `random:SEED`), zero-padded; four Conv1d over the words with the vector's D as input channels
  (k 3, padding 1, BatchNorm, ReLU; channels 256/512/512/`low`), max over the words. (The jingliao132 repo convolves
  over the embedding axis instead; not followed.)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

import models.common.text as _text
from models.common.items import Items, TokensData, View
from models.common.lazy import lazy
from models.common.loop import EpochTrainer, shuffled_batches
from models.common.metrics import modality_matrix
from models.common.pictures import PictureFinetuning
from pipeline.registry import register_trainer

torch = lazy("torch")
_nets = lazy("models.shr.nets")
_losses = lazy("models.common.losses")

log = logging.getLogger(__name__)

TRAINED = ("image2text", "text2image", "image2sound", "sound2image")  # the pairs the model sees; rsum counts these


@dataclass
class SHRConfig:
    hidden: int = 4096  # the shared layers' width (the aligned representation)
    low: int = 1024  # what every student hands the shared layers
    width: float = 1.0  # multiplies hidden, low and the students' channels (small machines)
    sound_frames: int = 500  # spectrogram steps fed to the sound student (5 s at 10 ms)
    max_words: int = 16
    word_vectors: str = "random:0"  # word2vec/GloVe file, skip-thoughts dir, or random:SEED (not pretrained)
    word_dim: int = 300  # random:SEED vectors' width (a file gives its own)
    min_word_count: int = 1  # random:SEED: training words seen this often get a vector
    temperature: float = 1.0  # the teacher's softmax temperature over its logits
    kl_weight: float = 1.0
    rank_weight: float = 1.0
    margin: float = 0.2
    rank_direction: Literal["a2b", "both"] = "a2b"  # a2b: image rows are the queries (the paper's formula)
    disjoint: bool = False  # True: image-text and image-sound pairs from disjoint halves of the training images
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-4
    grad_clip: float = 0.0
    dropout: float = 0.0
    seed: int = 0
    eval_folds: int = 1  # 5: the paper's 5 x 1000 items (a 5000-image test split)
    image_form: Literal["vector", "map"] = "vector"  # map: the image stage's [H, W, C] maps, averaged over H, W
    finetune_cnn: bool = False  # the image student starts with the image stage's CNN, trained on the raw pictures
    crop_size: int | None = None  # that CNN's input side with finetune_cnn; None: the image stage's

    def __post_init__(self) -> None:
        checks = [(self.hidden >= 1 and self.low >= 1, "hidden and low must be >= 1"), (self.width > 0, "width must be > 0"),
                  (self.sound_frames >= 16, "sound_frames must be >= 16 (four stride-2 convolutions)"),
                  (self.max_words >= 1, "max_words must be >= 1"), (self.temperature > 0, "temperature must be > 0"),
                  (self.kl_weight >= 0 and self.rank_weight >= 0 and self.kl_weight + self.rank_weight > 0,
                   "kl_weight and rank_weight must be >= 0, not both 0"),
                  (self.rank_direction in ("a2b", "both"), "rank_direction must be a2b or both"),
                  (self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 2, "batch_size must be >= 2"),
                  (self.lr > 0, "lr must be > 0"), (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
                  (self.eval_folds >= 1, "eval_folds must be >= 1"),
                  (self.image_form in ("vector", "map"), "image_form must be vector or map"),
                  (self.crop_size is None or self.finetune_cnn, "crop_size is the fine-tuned CNN's input side: it "
                   "needs finetune_cnn: true")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def size(self, n: int) -> int:
        """A layer width scaled by `width` (at least 8)."""
        return max(8, int(round(n * self.width)))


@register_trainer
class SeeHearRead(PictureFinetuning, EpochTrainer):
    """See, Hear, and Read: image, sound and text students distilled from an image teacher, ranked against images."""

    name = "see-hear-read"
    VERSION = 1
    Config = SHRConfig
    picture_view = "image"  # finetune_cnn: the CNN of the stage bound to the image view
    tasks = ("modalities",)
    score_name = "rsum"

    def __init__(self, config: Any = None, device: str = "auto", cnn: Any = None) -> None:
        super().__init__(config, device)
        self.vectors: Any = None
        self.dims: dict[str, int] = {}
        self.cnn = cnn  # models.common.pictures.ImageCNN, with finetune_cnn
        self._encodings: dict[str, np.ndarray] = {}  # text -> its word vectors under self.vectors

    def needs_media(self, clip: Any) -> str | None:
        if self.config.finetune_cnn and not ({"image", "video"} & set(clip.media)):
            return "no raw picture (finetune_cnn trains the CNN on the dataset's pictures)"
        return None

    def views(self) -> list[View]:
        cfg = self.config
        return [View("image", "visual", cfg.image_form, per="group", dtype="float32"),
                View("teacher", "visual", "distribution", per="group", dtype="float32", temperature=cfg.temperature),
                View("sound", "audio", "sequence", max_len=cfg.sound_frames, dtype="float32", optional=True),
                View("text", "text", "tokens", max_len=cfg.max_words, optional=True)]

    def group_outputs(self) -> frozenset[str]:
        return frozenset({"image"})

    def describe(self) -> dict[str, Any]:
        spec = str(self.config.word_vectors)
        return {"word_vectors": {"spec": spec, "pretrained": not spec.startswith("random:")},
                "pairs": "image+text and image+sound batches, alternating; never text+sound"}

    # -- building and state ------------------------------------------------------------------------

    def build(self, dims: dict[str, int], vectors: Any) -> "SeeHearRead":
        """A freshly initialised model (seeded) for inputs of `dims` (image, sound, classes) and `vectors`."""
        if self.config.finetune_cnn and self.cnn is None:
            raise ValueError("finetune_cnn trains the image CNN: pass cnn=ImageCNN(...) (the pipeline takes the image "
                             "stage's)")
        self.dims, self.vectors, self._encodings = {k: int(v) for k, v in dims.items()}, vectors, {}
        cnn = self.cnn.build() if self.config.finetune_cnn else None  # the stage's own weights, before the seed
        torch.manual_seed(self.config.seed)
        self.model = _nets.SHRModel(self.config, self.dims["image"], self.dims["sound"], int(vectors.dim),
                                    self.dims["classes"], cnn).to(self.torch_device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        return self

    def build_state(self) -> dict[str, Any]:
        assert self.vectors is not None
        return {"dims": dict(self.dims), **_text.vectors_state(self.vectors, self.config.word_vectors)}

    def rebuild(self, state: dict[str, Any]) -> None:
        cfg = self.config
        self.build(state["dims"], _text.restore_vectors(cfg.word_vectors, state, cfg.word_dim))

    # -- inputs ------------------------------------------------------------------------------------

    def _tensor(self, x: np.ndarray) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.torch_device)

    def _image(self, items: Items, groups: np.ndarray, train: bool = False) -> "torch.Tensor":
        """The image student's input: stored features (a map averaged over its cells), or with `finetune_cnn` the
        raw pictures (augmented in training)."""
        if self.config.finetune_cnn:
            from models.common.pictures import cnn_input

            if "pictures" not in items.data:
                raise ValueError("finetune_cnn runs the CNN on raw pictures, and these items come without them")
            return cnn_input(self.cnn, items.data["pictures"](groups), int(self.config.crop_size or self.cnn.crop_size),
                             train, self.torch_device)
        x = np.asarray(items.data["image"][groups], dtype=np.float32)
        return self._tensor(x.reshape(len(x), -1, x.shape[-1]).mean(axis=1) if x.ndim > 2 else x)  # a map: mean over H, W

    def _words(self, items: Items, idx: np.ndarray) -> "torch.Tensor":
        """Word vectors `[B, max_words, D]` of the items' first sentences, zero-padded."""
        texts = items.data["text"].texts
        out = np.zeros((len(idx), self.config.max_words, self.vectors.dim), np.float32)
        for k, i in enumerate(idx):
            rows = self._encoded(texts[int(i)])
            out[k, :len(rows)] = rows
        return self._tensor(out)

    def _encoded(self, text: str) -> np.ndarray:
        """A text's word vectors (first sentence, up to max_words), tokenized once (`build` resets the cache)."""
        if text not in self._encodings:
            self._encodings[text] = self.vectors.encode(text)[:self.config.max_words]
        return self._encodings[text]

    def _input(self, items: Items, modality: str, idx: np.ndarray) -> "torch.Tensor":
        if modality == "sound":
            return self._tensor(items.data["sound"](idx))
        return self._words(items, idx)

    # -- training ----------------------------------------------------------------------------------

    def pair_sets(self, train: Items) -> dict[str, np.ndarray]:
        """The training items that give image-text pairs and those that give image-sound pairs: all of them for
        both, or (`disjoint`) the items of one half of the images for text and of the other half for sound."""
        assert train.group_of is not None
        has = {k: train.present.get(k, np.ones(len(train), dtype=bool)) for k in ("text", "sound")}
        if self.config.disjoint:  # of the images with both, half give their texts, the other half their sounds
            both = np.intersect1d(train.group_of[has["text"]], train.group_of[has["sound"]])
            to_text = np.random.default_rng([self.config.seed, 7]).permutation(both)[:len(both) // 2]
            shared = np.isin(train.group_of, both)
            has["text"] = has["text"] & (~shared | np.isin(train.group_of, to_text))
            has["sound"] = has["sound"] & (~shared | ~np.isin(train.group_of, to_text))
        return {k: np.flatnonzero(v) for k, v in has.items()}

    def fit(self, train: Items, val: Items | None = None, **hooks: Any) -> "SeeHearRead":
        sets = self.pair_sets(train)
        if min(len(s) for s in sets.values()) < 2:
            raise ValueError(f"needs >= 2 image-text and >= 2 image-sound training pairs; has "
                             f"{len(sets['text'])} and {len(sets['sound'])} (disjoint: {self.config.disjoint})")
        if self.model is None:
            image = np.asarray(train.data["image"][np.arange(1)])
            if image.ndim == 2 and image.shape[1] > 32768:
                raise ValueError(f"the image view holds {image.shape[1]} values per picture: a map read as a vector? "
                                 "set image_form: map (averaged over its cells) or bind a vector stage (fc7)")
            self.build({"image": int(self.cnn.dim if self.config.finetune_cnn else image.shape[-1]), "sound": int(train.data["sound"].dim),
                        "classes": int(np.asarray(train.data["teacher"]).shape[1])},
                       _text.training_vectors(self.config.word_vectors, [train.data["text"].texts[int(i)]
                                                                        for i in sets["text"]],
                                              self.config.word_dim, self.config.min_word_count))
        return self.run_epochs(train, val, hooks.get("on_epoch"))  # type: ignore[return-value]

    def batches(self, train: Items, epoch: int) -> Any:
        """("text" | "sound", item indices): one kind per batch, alternating while both last."""
        sets = self.pair_sets(train)
        bs, seed = self.config.batch_size, self.config.seed
        runs = {kind: [idx[b] for b in shuffled_batches(len(idx), bs, seed + k, epoch)]
                for k, (kind, idx) in enumerate(sets.items())}
        for k in range(max(len(r) for r in runs.values())):
            for kind in ("text", "sound"):
                if k < len(runs[kind]):
                    yield kind, runs[kind][k]

    def batch_loss(self, train: Items, batch: Any, epoch: int) -> tuple["torch.Tensor", dict[str, float]]:
        kind, idx = batch
        cfg, m = self.config, self.model
        assert m is not None and train.group_of is not None
        groups = train.group_of[idx]
        h_img, z_img = m("image", self._image(train, groups, train=True))
        h_x, z_x = m(kind, self._input(train, kind, idx))
        with torch.autocast(self.torch_device.type, enabled=False):
            teacher = self._tensor(np.asarray(train.data["teacher"][groups]))
            kl = 0.5 * _losses.distillation_kl(teacher, z_img.float()) + 0.5 * _losses.distillation_kl(teacher, z_x.float())
            rank = _losses.ContrastiveLoss(cfg.margin, direction=cfg.rank_direction)(h_img.float(), h_x.float())
            loss = cfg.kl_weight * kl + cfg.rank_weight * rank
        return loss, {"loss": float(loss.detach()), "kl": float(kl.detach()), f"rank_{kind}": float(rank.detach())}

    def validate(self, val: Items) -> dict[str, float]:
        """rsum (R@1 + R@5 + R@10) over the trained pairs, both ways: image<->text, image<->sound."""
        m = self.evaluate(val)
        return {"val_rsum": float(sum(m["matrix"][d][f"r@{k}"] for d in TRAINED if d in m["matrix"] for k in (1, 5, 10)))}

    # -- embedding ---------------------------------------------------------------------------------

    def embed(self, items: Items, bs: int = 64) -> dict[str, np.ndarray]:
        """The aligned representation, l2-normalised: `image` per image, `sound` and `text` per item (each branch
        on its own, as a query of one modality is embedded)."""
        assert self.model is not None and items.group_of is not None
        return {"image": self.image_embeddings(items, np.arange(len(items.groups)), bs),
                "sound": self.audio_embeddings(items, np.arange(len(items)), bs),
                "text": self._text_branch(items, np.arange(len(items)), bs)}

    # -- one modality at a time: the run's stores, and a query (`pipeline embed`, `pipeline serve`) --------

    audio_view = "sound"  # the view (and embeddings store) of the sound branch

    @property
    def trunk_live(self) -> bool:
        """Whether pictures go through the run's own fine-tuned CNN rather than the image stage's maps."""
        return bool(self.config.finetune_cnn)

    def text_embeddings(self, texts: Sequence[str], bs: int = 64) -> np.ndarray:
        """The text branch's embeddings `[n, d]` of written sentences (their first sentence, up to max_words)."""
        assert self.model is not None and self.vectors is not None
        items = Items([str(i) for i in range(len(texts))], {"text": TokensData(list(texts))})
        return self._text_branch(items, np.arange(len(texts)), bs)

    def _text_branch(self, items: Items, idx: np.ndarray, bs: int) -> np.ndarray:
        return self.infer(len(idx), bs, lambda i: self._embed_branch("text", self._input(items, "text", idx[i])),
                          self._empty)

    def image_embeddings(self, items: Items, groups: np.ndarray, bs: int = 64) -> np.ndarray:
        """The image branch's embeddings `[len(groups), d]` of the items' groups' stored image features."""
        return self.infer(len(groups), bs, lambda i: self._embed_branch("image", self._image(items, groups[i])),
                          self._empty)

    def picture_embeddings(self, pictures: np.ndarray) -> np.ndarray:
        """Embeddings of uint8 pictures `[B, H, W, 3]` through the fine-tuned CNN (`finetune_cnn` runs)."""
        from models.common.pictures import cnn_input

        chw = [torch.from_numpy(np.ascontiguousarray(p.transpose(2, 0, 1))) for p in pictures]
        crop = int(self.config.crop_size or self.cnn.crop_size)
        return self.infer(len(chw), 16, lambda i: self._embed_branch(
            "image", cnn_input(self.cnn, [chw[int(k)] for k in i], crop, False, self.torch_device)),
            self._empty)

    def audio_embeddings(self, items: Items, idx: np.ndarray, bs: int = 64) -> np.ndarray:
        """The sound branch's embeddings `[len(idx), d]` of the items' `sound` view."""
        return self.infer(len(idx), bs, lambda i: self._embed_branch("sound", self._input(items, "sound", idx[i])),
                          self._empty)

    @property
    def _empty(self) -> tuple[int, int]:
        return (0, self.config.size(self.config.hidden))

    def _embed_branch(self, modality: str, x: "torch.Tensor") -> "torch.Tensor":
        assert self.model is not None
        return torch.nn.functional.normalize(self.model(modality, x)[0].float(), dim=1)

    def evaluate(self, items: Items) -> dict[str, Any]:
        """Retrieval between every two modalities of the items (`models.common.metrics.modality_matrix`)."""
        assert items.group_of is not None
        return modality_matrix(self.embed(items), items.group_of, present=items.present)
