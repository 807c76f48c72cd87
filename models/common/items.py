"""What a trainer sees: `View` (a named input with its modality and form) and `Items` (the items of one
split or fold with every view's data). No I/O here: the pipeline's training layer reads the stores and
the manifest into these, and hands a trainer only the items it may learn from.

Forms of a view's data, per item (or per group of items, `per: group`: one image for its captions):
- `vector`: `[n, D]`, the mean of each item's rows (a clip-level vector);
- `sequence`: a `SequenceData`, `data(idx) -> [B, max_len, D]` cropped / zero-padded, with `lengths`;
- `map`: `[n, H, W, C]`, the mean of each item's maps over time (one picture: the map itself);
- `tokens`: a `TokensData`, each item's text, its ids under a vocabulary built on the training split;
- `distribution`: `[n, K]`, class probabilities (softmax of the mean logits at a temperature, or the
  mean of rows that are probabilities already).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

import numpy as np

from models.common.text import tokenize

FORMS = ("vector", "sequence", "map", "tokens", "distribution")
PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"


@dataclass(frozen=True)
class View:
    """A named input of a trainer. `modality` binds it: an upstream stage of that modality (audio,
    visual, ...), or for `tokens` the manifest's text. `name` is also the view's entry in the run key."""

    name: str
    modality: str
    form: Literal["vector", "sequence", "map", "tokens", "distribution"] = "vector"
    per: Literal["item", "group"] = "item"
    max_len: int | None = None  # sequence: frames kept; tokens: words kept (None: all)
    dtype: str = "float64"
    min_count: int = 1  # tokens: a word enters the vocabulary when the training split has it this often
    temperature: float = 1.0  # distribution: softmax temperature over logits
    optional: bool = False  # an item may lack it (a caption corpus mixed with a video corpus: no sound, no text);
    #                          `Items.present[name]` says which items have it, the others read as zeros / ""

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"view '{self.name}': form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if self.form == "sequence" and not self.max_len:
            raise ValueError(f"view '{self.name}': a sequence needs max_len")
        if self.optional and (self.per == "group" or self.form not in ("sequence", "tokens")):
            raise ValueError(f"view '{self.name}': only per-item sequence and tokens views can be optional")


def build_vocab(texts: Sequence[str], min_count: int) -> list[str]:
    """Special tokens, then words seen >= `min_count` times, most frequent first (ties alphabetical)."""
    counts = Counter(w for t in texts for w in tokenize(t))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return [PAD, START, END, UNK, *words]


def encode_texts(texts: Sequence[str], vocab: Sequence[str], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids `[B, L]` (0-padded, <start> ... <end>) and lengths `[B]` under `vocab`."""
    index = {w: i for i, w in enumerate(vocab)}
    ids = [[index[START], *(index.get(w, index[UNK]) for w in tokenize(t)[:max_len]), index[END]] for t in texts]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    out = np.zeros((len(ids), int(lengths.max()) if len(ids) else 0), dtype=np.int64)
    for i, x in enumerate(ids):
        out[i, :len(x)] = x
    return out, lengths


@dataclass
class TokensData:
    """The texts of some items and the vocabulary of the training split they are encoded with."""

    texts: list[str]
    vocab: list[str] = field(default_factory=list)
    max_len: int | None = None

    def ids(self, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and lengths of the items `idx` (all by default)."""
        texts = self.texts if idx is None else [self.texts[int(i)] for i in idx]
        return encode_texts(texts, self.vocab, self.max_len)

    def subset(self, idx: np.ndarray) -> "TokensData":
        return replace(self, texts=[self.texts[int(i)] for i in idx])

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class SequenceData:
    """Row sequences of some items, read on demand: `data(idx) -> [B, max_len, D]` float32, cropped or
    zero-padded at the end; `lengths` holds each item's length before cropping (at most max_len)."""

    read: Callable[[str], np.ndarray]  # item id -> its rows [T, ...]
    ids: list[str]
    max_len: int
    dim: int
    lengths: np.ndarray

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((len(idx), self.max_len, self.dim), dtype=np.float32)
        for k, i in enumerate(idx):
            x = self.read(self.ids[int(i)])[:self.max_len]
            out[k, :len(x)] = x.reshape(len(x), self.dim)
        return out

    def subset(self, idx: np.ndarray) -> "SequenceData":
        return replace(self, ids=[self.ids[int(i)] for i in idx], lengths=self.lengths[idx])

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class MapData:
    """Maps of some items read on demand, for when they would not fit in memory together (SpokenCOCO's 40k
    images x 14 x 14 x 512): `data[idx] -> [B, H, W, C]` like an array's, `shape`, `subset`, and
    `np.asarray(data)` (reads them all)."""

    read: Callable[[str], np.ndarray]  # item id -> its map [H, W, C]
    ids: list[str]
    dims: tuple[int, ...]
    dtype: str = "float32"

    def __getitem__(self, idx: Any) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.ndim == 0:
            return np.asarray(self.read(self.ids[int(idx)]), dtype=self.dtype)
        out = np.empty((len(idx), *self.dims), dtype=self.dtype)
        for k, i in enumerate(idx):
            out[k] = self.read(self.ids[int(i)])
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.ids), *self.dims)

    @property
    def ndim(self) -> int:
        return 1 + len(self.dims)

    def subset(self, idx: np.ndarray) -> "MapData":
        return replace(self, ids=[self.ids[int(i)] for i in idx])

    def __len__(self) -> int:
        return len(self.ids)


def _take(data: Any, idx: np.ndarray) -> Any:
    return data.subset(idx) if hasattr(data, "subset") else data[idx]


@dataclass
class Items:
    """Items of one split or fold, aligned by index: ids, each view's data (per item, or per group for
    `per: group` views), class labels, groups (`group_of[i]` indexes `groups`), texts, and `media`: the
    manifest's clips, for trainers that read raw media (a fine-tuned CNN's pictures)."""

    ids: list[str]
    data: dict[str, Any]
    per_group: frozenset[str] = frozenset()
    labels: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    group_of: np.ndarray | None = None
    media: list[Any] = field(default_factory=list)
    present: dict[str, np.ndarray] = field(default_factory=dict)  # optional view -> which items have it

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray | Sequence[int]) -> "Items":
        """The items `idx` (in that order) with their views; groups are re-indexed to those still present."""
        idx = np.asarray(idx, dtype=np.int64)
        groups, group_of, gidx = self.groups, self.group_of, None
        if self.group_of is not None:
            gidx = np.array(list(dict.fromkeys(int(g) for g in self.group_of[idx])), dtype=np.int64)
            remap = {int(g): k for k, g in enumerate(gidx)}
            groups = [self.groups[int(g)] for g in gidx]
            group_of = np.array([remap[int(g)] for g in self.group_of[idx]], dtype=np.int64)
        data = {name: _take(d, gidx if name in self.per_group and gidx is not None else idx)
                for name, d in self.data.items()}
        return Items([self.ids[int(i)] for i in idx], data, self.per_group,
                     None if self.labels is None else self.labels[idx], self.classes, groups, group_of,
                     [self.media[int(i)] for i in idx] if self.media else [],
                     {name: mask[idx] for name, mask in self.present.items()})

    def group_firsts(self) -> np.ndarray:
        """Per group, the index of its first item."""
        assert self.group_of is not None
        first: dict[int, int] = {}
        for i, g in enumerate(self.group_of):
            first.setdefault(int(g), i)
        return np.array([first[g] for g in range(len(self.groups))], dtype=np.int64)
