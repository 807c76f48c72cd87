"""Alignment and glancing scores of cross-modal attention (Khorrami & Räsänen, Interspeech 2021).

A VGS model gives each utterance-image pair an audio-visual tensor S `[T, H*W]` (64 speech frames x
14 x 14 image cells). How well does its attention put a spoken word on the object the word names?

- `attention_maps` turns S into the spatial attention SA (softmax over pixels per frame) and the
  temporal attention TA (softmax over frames per pixel), clipped at 0 and nearest-neighbour upsampled
  to `[512, 224, 224]`: the reference's `prepare_tensors`.
- With a binary object mask M `[224, 224]` and the word's span `[onset, offset)` in 10 ms frames:
  glancing scores (GS: mass of attention summed over the span) and alignment scores (AS: per frame or
  per pixel, then averaged), for the object (SA) and for the word (TA); the reference's formulas
  (`scores/utils.py`), unrounded. Each has a brute-force form on the upsampled tensors and an exact
  fast form at the source resolution (`source_scores`: nearest-neighbour upsampling only repeats
  cells, so every sum is a weighted sum of the source cells); a test holds them equal.
- `word_spans`: word onsets from timecodes in 10 ms frames, offset = the next word's onset (the last
  word: its onset + 2), words from the first one reaching frame 512 dropped, shifted by the left
  zero padding of the speech input.
- `match_categories`: which spoken words name which of the image's object categories: by name,
  plural and the synonym table below; with word vectors (word2vec binary or text, gensim), also
  the reference's rule, cosine similarity >= 0.5.
- `CocoMasks`: object masks from COCO instance annotations (polygons and RLE, pycocotools): the
  summed instance masks of a category, bilinearly resized to 224 x 224, then >= 0.01.

Deviations from the reference, on purpose: scores are not rounded to 3 decimals; the random baseline
of each score uses the same score function (the reference scores its random tensor with GS_word for
AS_word too); the confusion matrix's last row is the background (pixels of no annotated object),
where the reference's double negation gives the union of the annotated objects.
"""
from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from pipeline.registry import register_evaluator

MAX_FRAMES = 512  # speech input frames (10 ms): the reference's length_sequence
GRID = (14, 14)
SCALE_T, SCALE_HW = 8, 16  # 64 -> 512 frames, 14 -> 224 pixels

# Spoken words -> COCO category names: what NLTK + word2vec decide in the reference, as a table.
SYNONYMS: dict[str, str] = {
    **{w: "person" for w in ("man", "men", "woman", "women", "boy", "boys", "girl", "girls", "people", "person",
                             "persons", "child", "children", "kid", "kids", "guy", "guys", "lady", "ladies", "player",
                             "players", "baby", "babies", "skier", "skiers", "surfer", "surfers", "skateboarder",
                             "rider", "riders", "someone", "adult", "adults", "male", "female", "gentleman")},
    "bike": "bicycle", "bikes": "bicycle", "motorbike": "motorcycle", "motorbikes": "motorcycle",
    "plane": "airplane", "planes": "airplane", "aeroplane": "airplane", "jet": "airplane", "jets": "airplane",
    "airliner": "airplane", "phone": "cell phone", "phones": "cell phone", "cellphone": "cell phone",
    "television": "tv", "sofa": "couch", "sofas": "couch", "doughnut": "donut", "doughnuts": "donut",
    "hydrant": "fire hydrant", "teddy": "teddy bear", "racket": "tennis racket", "racquet": "tennis racket",
    "bat": "baseball bat", "glove": "baseball glove", "mitt": "baseball glove", "table": "dining table",
    "tables": "dining table", "plant": "potted plant", "plants": "potted plant", "ski": "skis",
    "puppy": "dog", "puppies": "dog", "kitten": "cat", "kittens": "cat", "kitty": "cat", "cattle": "cow",
    "calf": "cow", "lamb": "sheep", "lambs": "sheep", "ship": "boat", "ships": "boat", "fridge": "refrigerator",
    "hotdog": "hot dog", "hotdogs": "hot dog", "ball": "sports ball", "balls": "sports ball",
    "glass": "wine glass", "glasses": "wine glass", "knives": "knife", "mice": "mouse", "buses": "bus",
    "computer": "laptop", "signal": "traffic light", "giraffes": "giraffe", "sandwiches": "sandwich",
}
STOPWORDS = frozenset("a an the of on in at to and or is are was with there this that it its his her their some "
                      "two three for from by as be has have near next onto into".split())


# --- attention tensors -------------------------------------------------------------------------------

def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def source_maps(scores: np.ndarray, grid: tuple[int, int] | None = GRID, softmax: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """SA and TA at the source resolution `[T, H, W]`: softmax over pixels per frame and over frames per
    pixel (or the raw scores), clipped at 0. `grid=None`: a square grid of the scores' cells."""
    s = np.asarray(scores)
    if grid is None:
        side = int(round(np.sqrt(s.shape[-1])))
        grid = (side, side)
    if s.ndim != 2 or s.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"scores must be [T, {grid[0] * grid[1]}] (one utterance's AV tensor), got {s.shape}")
    sa, ta = (_softmax(s, 1), _softmax(s, 0)) if softmax else (s, s)
    shape = (s.shape[0], *grid)
    return np.clip(sa.reshape(shape), 0, None), np.clip(ta.reshape(shape), 0, None)


def upsample(x: np.ndarray, scale_t: int = SCALE_T, scale_hw: int = SCALE_HW) -> np.ndarray:
    """Nearest-neighbour upsampling of `[T, H, W]` to `[T*scale_t, H*scale_hw, W*scale_hw]`."""
    return np.repeat(np.repeat(np.repeat(x, scale_t, axis=0), scale_hw, axis=1), scale_hw, axis=2)


def attention_maps(scores: np.ndarray, grid: tuple[int, int] = GRID, scale_t: int = SCALE_T, scale_hw: int = SCALE_HW,
                   softmax: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(SA, TA) of one utterance's `[T, H*W]` scores, clipped at 0 and upsampled: the reference's tensors."""
    sa, ta = source_maps(scores, grid, softmax)
    return upsample(sa, scale_t, scale_hw), upsample(ta, scale_t, scale_hw)


# --- the four scores on upsampled tensors (the reference's formulas) ------------------------------------

def glancing_score_object(sa: np.ndarray, mask: np.ndarray, onset: int, offset: int) -> float:
    """Share of the spatial attention summed over the word's frames that falls on the object."""
    m = sa[onset:offset].sum(axis=0)
    return float((mask * m).sum() / m.sum())


def glancing_score_word(ta: np.ndarray, mask: np.ndarray, onset: int, offset: int) -> float:
    """Share of the object's temporal attention (summed over its pixels) that falls in the word's frames."""
    s = (ta * mask[None]).sum(axis=(1, 2))
    return float(s[onset:offset].sum() / s.sum())


def alignment_score_object(sa: np.ndarray, mask: np.ndarray, onset: int, offset: int) -> float:
    """Mean over the word's frames of the share of that frame's spatial attention on the object."""
    x = sa[onset:offset]
    return float(((x * mask[None]).sum(axis=(1, 2)) / x.sum(axis=(1, 2))).mean())


def alignment_score_word(ta: np.ndarray, mask: np.ndarray, onset: int, offset: int) -> float:
    """Mean over all pixels of the object's pixels' share of temporal attention in the word's frames."""
    share = ta[onset:offset].sum(axis=0) / ta.sum(axis=0)
    return float((mask * share).sum() / mask.size)


SCORES = {"gs_object": glancing_score_object, "gs_word": glancing_score_word,
          "as_object": alignment_score_object, "as_word": alignment_score_word}


# --- the same scores at the source resolution, exactly --------------------------------------------------

def cell_counts(mask: np.ndarray, grid: tuple[int, int] = GRID) -> np.ndarray:
    """Mask pixels per source cell `[H, W]` of a full-resolution binary mask."""
    h, w = grid
    return mask.reshape(h, mask.shape[0] // h, w, mask.shape[1] // w).sum(axis=(1, 3), dtype=np.float64)


def frame_weights(n_source: int, scale_t: int, onset: int, offset: int) -> np.ndarray:
    """How many upsampled frames of `[onset, offset)` each source frame covers."""
    t = np.arange(max(onset, 0), min(offset, n_source * scale_t))
    return np.bincount(t // scale_t, minlength=n_source).astype(np.float64)


def source_scores(sa: np.ndarray, ta: np.ndarray, mask: np.ndarray, onset: int, offset: int,
                  scale_t: int = SCALE_T) -> dict[str, float]:
    """The four scores of `SCORES` from source-resolution SA/TA `[T, H, W]` and a full-resolution mask:
    equal to the scores of the upsampled tensors (upsampling only repeats cells)."""
    c = cell_counts(mask, sa.shape[1:]).ravel()
    area = mask.size / c.size  # pixels per cell
    sa2, ta2 = sa.reshape(len(sa), -1).astype(np.float64), ta.reshape(len(ta), -1).astype(np.float64)
    w = frame_weights(len(sa), scale_t, onset, offset)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = w @ sa2
        gs_object = float(c @ m / (area * m.sum()))
        s = ta2 @ c
        gs_word = float(w @ s / (scale_t * s.sum()))
        per_frame = (sa2 @ c) / (area * sa2.sum(axis=1))
        as_object = float((w @ per_frame) / w.sum())
        as_word = float(c @ ((w @ ta2) / (scale_t * ta2.sum(axis=0))) / mask.size)
    return {"gs_object": gs_object, "gs_word": gs_word, "as_object": as_object, "as_word": as_word}


def full_scores(sa: np.ndarray, ta: np.ndarray, mask: np.ndarray, onset: int, offset: int) -> dict[str, float]:
    """The four scores of upsampled tensors (what the random baseline needs: its pixels are independent)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"gs_object": glancing_score_object(sa, mask, onset, offset),
                "gs_word": glancing_score_word(ta, mask, onset, offset),
                "as_object": alignment_score_object(sa, mask, onset, offset),
                "as_word": alignment_score_word(ta, mask, onset, offset)}


def random_scores(rand: np.ndarray, total: np.ndarray, mask: np.ndarray, onset: int, offset: int, on_w: int,
                  off_w: int) -> dict[str, float]:
    """The four scores of one random tensor (both SA and TA, as the reference), `total` its sum over frames:
    the formulas of `full_scores`, arranged to read the whole tensor once (a matrix-vector product)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        x = rand[onset:offset].astype(np.float64)
        m = x.sum(axis=0)
        per_frame = x.reshape(len(x), -1) @ mask.ravel() / x.reshape(len(x), -1).sum(axis=1)
        s = rand.reshape(len(rand), -1) @ mask.ravel().astype(np.float32)
        return {"random_gs_object": float((mask * m).sum() / m.sum()),
                "random_as_object": float(per_frame.mean()),
                "random_gs_word": float(s[on_w:off_w].sum(dtype=np.float64) / s.sum(dtype=np.float64)),
                "random_as_word": float((mask * rand[on_w:off_w].sum(axis=0, dtype=np.float64) / total).sum()
                                        / mask.size)}


# --- words, spans, categories -------------------------------------------------------------------------

def _ceil_frames(seconds: float, hop_ms: int = 10) -> int:
    ms = int(round(seconds * 1000))
    return -(-ms // hop_ms)


def word_spans(words: Sequence[tuple[str, float, float]], n_frames: int,
               max_frames: int = MAX_FRAMES) -> list[tuple[int, str, int, int]]:
    """(index, word, onset, offset) in 10 ms frames of the left-padded speech input, as the reference:
    onset = ceil(ms / 10), offset = the next word's onset (the last word: its onset + 2); from the first
    word reaching `max_frames` on, words are dropped; all shifted by the padding max(0, max_frames - n_frames)."""
    onsets = [_ceil_frames(start) for _, start, _ in words]
    offsets = onsets[1:] + ([onsets[-1] + 2] if onsets else [])
    pad = max(0, max_frames - int(n_frames))
    out = []
    for i, (w, _, _) in enumerate(words):
        if onsets[i] >= max_frames or offsets[i] >= max_frames:
            break
        out.append((i, str(w), onsets[i] + pad, offsets[i] + pad))
    return out


def normalise(word: str) -> str:
    """Lower case, letters only."""
    return re.sub(r"[^a-z]", "", word.lower())


def category_of(word: str, names: Iterable[str]) -> str | None:
    """The category a single spoken word names (by name, plural or synonym), or None."""
    names = set(names)
    w = normalise(word)
    if not w or w in STOPWORDS:
        return None
    forms = singulars(w)
    cands = [w, SYNONYMS.get(w), *forms[1:], *(SYNONYMS.get(c) for c in forms[1:])]
    return next((c for c in cands if c and c in names), None)


def singulars(w: str) -> list[str]:
    """A word and its possible singular forms (cars -> car, buses -> bus, ponies -> pony)."""
    out = [w]
    if w.endswith("ies"):
        out.append(w[:-3] + "y")
    if w.endswith("es"):
        out.append(w[:-2])
    if w.endswith("s"):
        out.append(w[:-1])
    return out


@dataclass(frozen=True)
class Mention:
    """A spoken word (or two, for two-word names) naming a category, with its frame span."""

    word: str
    category: str
    onset: int
    offset: int
    how: str  # name | vectors


def match_categories(spans: Sequence[tuple[int, str, int, int]], categories: Iterable[str],
                     vectors: Any = None, threshold: float = 0.5) -> list[Mention]:
    """The spans that name one of `categories` (the image's annotated ones): two-word names first
    ("hot dog"), then single words by name, plural and synonym; with word vectors, else the most
    similar category at cosine >= `threshold` (the reference's rule)."""
    cats = list(dict.fromkeys(categories))
    multi = {tuple(c.split()): c for c in cats if " " in c}
    out: list[Mention] = []
    used: set[int] = set()
    for k, (i, w, on, off) in enumerate(spans):
        if k in used:
            continue
        if k + 1 < len(spans) and spans[k + 1][0] == i + 1:
            pair = next(((normalise(w), s) for s in singulars(normalise(spans[k + 1][1]))
                         if (normalise(w), s) in multi), None)
            if pair is not None:
                out.append(Mention(f"{w} {spans[k + 1][1]}", multi[pair], on, spans[k + 1][3], "name"))
                used |= {k, k + 1}
                continue
        cat = category_of(w, cats)
        how = "name"
        if cat is None and vectors is not None:
            cat, how = _by_vectors(normalise(w), cats, vectors, threshold), "vectors"
        if cat is not None:
            out.append(Mention(w, cat, on, off, how))
    return out


def _by_vectors(word: str, cats: list[str], vectors: Any, threshold: float) -> str | None:
    if not word or word in STOPWORDS or word not in vectors:
        return None
    best, best_sim = None, threshold
    for c in cats:
        key = c.split()[-1]
        if key in vectors:
            sim = float(vectors.similarity(word, key))
            if sim >= best_sim:
                best, best_sim = c, sim
    return best


# --- object masks ---------------------------------------------------------------------------------

def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D array to (height, width), half-pixel centres, no antialiasing (OpenCV's
    INTER_LINEAR, which the reference uses)."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    x = np.asarray(x, dtype=np.float64)
    r0, r1, wr = axis(x.shape[0], size[0])
    c0, c1, wc = axis(x.shape[1], size[1])
    rows = x[r0] * (1 - wr)[:, None] + x[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc)[None] + rows[:, c1] * wc[None]


@functools.lru_cache(maxsize=8)
def coco_masks(path: str, mtime_ns: int) -> "CocoMasks":
    """`CocoMasks` of an instances file, parsed once per process (COCO's val2014 file is 160 MB of JSON) while
    the file is unchanged (`mtime_ns`: `os.stat(path).st_mtime_ns`)."""
    return CocoMasks(path)


def load_masks(path: str | Path) -> "CocoMasks":
    """The `CocoMasks` of an instances file, shared by every caller in the process."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO instance annotations {path} do not exist")
    return coco_masks(str(path), path.stat().st_mtime_ns)


class CocoMasks:
    """Object masks of COCO instance annotations (`instances_<split>.json`): polygons and RLE via pycocotools."""

    def __init__(self, path: str | Path) -> None:
        from pycocotools.coco import COCO

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"COCO instance annotations {self.path} do not exist")
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco = COCO(str(self.path))
        cats = self.coco.loadCats(self.coco.getCatIds())
        self.categories = [c["name"] for c in cats]  # the order of category ids: the confusion matrix's
        self._cat_id = {c["name"]: c["id"] for c in cats}

    def image_categories(self, image_id: int) -> list[str]:
        """Names of the categories annotated in an image (not crowd regions), in category order."""
        ids = {a["category_id"] for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False))}
        return [n for n in self.categories if self._cat_id[n] in ids]

    def mask(self, image_id: int, category: str, size: tuple[int, int] = (224, 224), threshold: float = 0.01) -> np.ndarray:
        """A binary `[H, W]` mask: the category's instance masks summed, resized to `size`, then >= threshold."""
        img = self.coco.loadImgs(image_id)[0]
        total = np.zeros((img["height"], img["width"]), dtype=np.float64)
        with warnings.catch_warnings():  # pycocotools 2.0.11 on numpy 2: a DeprecationWarning per decoded RLE
            warnings.simplefilter("ignore", DeprecationWarning)
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, catIds=self._cat_id[category],
                                                              iscrowd=False)):
                total += self.coco.annToMask(ann)
        return (resize_bilinear(total, size) >= threshold).astype(np.float64)


# --- a corpus of utterances -------------------------------------------------------------------------

def score_utterances(utterances: Iterable[tuple[dict[str, Any], np.ndarray]], masks: dict[str, CocoMasks],
                     softmax: bool = True, vectors: Any = None, rng: np.random.Generator | None = None,
                     max_frames: int = MAX_FRAMES, threshold: float = 0.5) -> list[dict[str, Any]]:
    """One record per spoken word that names an object annotated in its image: the four scores, the same
    scores of a uniform random tensor (the reference's baseline; with `rng`), and per annotated category
    (and the background) the object scores on that category's pixels outside the named object.

    `utterances`: (item, S) with item = {clip_id, image_id, split, n_frames, words: [(word, start s, end s)]}
    and S its `[T, H*W]` AV tensor."""
    out = []
    for item, s in utterances:
        s = np.asarray(s, dtype=np.float64)
        scale_t = max_frames // s.shape[0]
        coco = masks.get(item["split"])
        if coco is None:
            continue
        cats = coco.image_categories(item["image_id"])
        spans = word_spans([tuple(w) for w in item["words"]], item["n_frames"], max_frames)
        mentions = match_categories(spans, cats, vectors, threshold)
        if not mentions:
            continue
        sa, ta = source_maps(s, None, softmax)  # a square grid of cells
        size = (sa.shape[1] * SCALE_HW, sa.shape[2] * SCALE_HW)
        cat_masks = {c: coco.mask(item["image_id"], c, size) for c in cats}
        anything = np.clip(sum(cat_masks.values()), 0, 1)
        rand = rng.random((s.shape[0] * scale_t, *size), dtype=np.float32) if rng is not None else None
        rand_total = rand.sum(axis=0, dtype=np.float64) if rand is not None else None
        for m in mentions:
            mask = cat_masks[m.category]
            on_w, off_w = max(m.onset, 0), min(m.offset, max_frames)
            obj = source_scores(sa, ta, mask, m.onset, m.offset, scale_t)
            word = obj if (on_w, off_w) == (m.onset, m.offset) else source_scores(sa, ta, mask, on_w, off_w, scale_t)
            rec: dict[str, Any] = {"clip_id": item["clip_id"], "image_id": item["image_id"], "word": m.word,
                                   "category": m.category, "onset": m.onset, "offset": m.offset, "how": m.how,
                                   "gs_object": obj["gs_object"], "as_object": obj["as_object"],
                                   "gs_word": word["gs_word"], "as_word": word["as_word"]}
            if rand is not None:
                rec.update(random_scores(rand, rand_total, mask, m.onset, m.offset, on_w, off_w))
            if any(not np.isfinite(v) for k, v in rec.items() if k.startswith(("gs_", "as_", "random_"))):
                continue  # an empty mask or span (the reference skips these NaNs too)
            outside = 1.0 - mask
            rows = {}
            for c, cm in cat_masks.items():
                sc = obj if c == m.category else source_scores(sa, ta, cm * outside, m.onset, m.offset, scale_t)
                rows[c] = [sc["gs_object"], sc["as_object"]]
            bg = source_scores(sa, ta, 1.0 - anything, m.onset, m.offset, scale_t)
            rows["(background)"] = [bg["gs_object"], bg["as_object"]]
            rec["rows"] = rows
            out.append(rec)
    return out


def summarize(records: list[dict[str, Any]], categories: Sequence[str]) -> dict[str, Any]:
    """Per category and over all words: mean scores and random baselines; the confusion matrices
    `[K + 1, K]` (rows: annotated categories, then background; columns: spoken categories) of the mean
    object scores."""
    keys = [key for k in SCORES for key in (k, f"random_{k}")]
    keys = [k for k in keys if all(k in r for r in records)] if records else keys

    def means(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"n": len(rs), **{k: float(np.mean([r[k] for r in rs])) if rs else float("nan") for k in keys}}

    per = {c: means([r for r in records if r["category"] == c]) for c in categories}
    index = {c: i for i, c in enumerate(categories)}
    conf = {}
    for j, name in enumerate(("gs_object", "as_object")):
        total = np.zeros((len(categories) + 1, len(categories)))
        count = np.zeros(len(categories))
        for r in records:
            col = index[r["category"]]
            count[col] += 1
            for row, v in r["rows"].items():
                total[index.get(row, len(categories)), col] += v[j]
        with np.errstate(invalid="ignore"):
            conf[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan).tolist()
    used = [c for c in categories if per[c]["n"]]
    overall = means(records)
    return {"n_words": len(records), "n_utterances": len({r["clip_id"] for r in records}), "overall": overall,
            "per_category_mean": {k: float(np.mean([per[c][k] for c in used])) if used else float("nan")
                                  for k in keys},
            "per_category": per, "confusion": conf}


@dataclass
class AlignmentConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    softmax: bool = True  # SA / TA as softmaxes of S (False: S itself, clipped at 0)
    random_baseline: bool = True  # the reference's uniform random tensor, scored the same way
    word_vectors: str | None = None  # word2vec file (binary .bin or text): also match words by similarity >= 0.5
    seed: int = 0  # of the random tensors
    pictures: int = 6  # sample utterances drawn with their attention
    sampled_recall: bool = True  # the reference's Recall@10 of 100 x 1000 pairs drawn with replacement
    model_dataset: str | None = None  # score the models its train stages learned on this other dataset (SpokenCOCO)

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or self.pictures < 0:
            raise ValueError(f"need ks >= 1 and pictures >= 0, got {self.ks} and {self.pictures}")


@register_evaluator
class Alignment:
    """Alignment and glancing scores of localization runs' AV tensors (with Recall@K), per category, beside the
    random baseline; the confusion heatmap; sample pictures."""

    name: ClassVar[str] = "alignment"
    VERSION: ClassVar[int] = 1
    Config: ClassVar[type] = AlignmentConfig
    reads: ClassVar[None] = None
    task: ClassVar[str] = "localization"
