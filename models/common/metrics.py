"""Retrieval metrics: MAP (the TNN-C-CCA definition), precision-recall curves, precision@K.

Rows of a similarity matrix are queries, columns the gallery. The ranking of a query sorts the
gallery by decreasing similarity; equal similarities keep gallery order (lower index first), so
every result is deterministic. Everything is vectorised over queries: the ranking of a block of
rows is one sort of packed integer keys (similarity bits, gallery index, relevance bit), with no
per-query Python loop; blocks of 64 rows run on a thread per core (numpy releases the GIL).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pipeline.registry import register_evaluator


def cosine_similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query row with every gallery row, `[n_queries, n_gallery]`."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(x.dtype).tiny)

    return unit(queries) @ unit(gallery).T


def _check(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> tuple:
    s = np.asarray(similarity)
    q, g = np.asarray(query_labels).reshape(-1), np.asarray(gallery_labels).reshape(-1)
    if s.ndim != 2 or s.shape != (len(q), len(g)):
        raise ValueError(f"similarity must be [n_queries, n_gallery] = [{len(q)}, {len(g)}], got {s.shape}")
    if np.isnan(s).any():
        raise ValueError("similarity contains NaN; check the embeddings (a zero vector?)")
    return s, q, g


def _ordered_keys(s: np.ndarray) -> np.ndarray:
    """int64 keys that sort ascending like float32 similarities sort descending."""
    i = (np.asarray(s, dtype=np.float32) + np.float32(0)).view(np.int32)  # + 0 turns -0.0 into 0.0
    i = i ^ ((i >> 31) & np.int32(0x7FFFFFFF))  # IEEE sign-magnitude -> two's complement order
    k = i.astype(np.int64)
    np.negative(k, out=k)  # descending; -(-2**31) still fits in int64
    return k


def _ranked(s: np.ndarray, q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Relevance in rank order for a block of query rows (checked inputs)."""
    m = s.shape[1]
    relevant = q[:, None] == g[None, :]
    if s.dtype == np.float64 and not np.array_equal(s.astype(np.float32), s):
        order = np.argsort(-s, axis=1, kind="stable")  # float64 ranks that float32 would merge
        return np.take_along_axis(relevant, order, axis=1)
    if m >= 2 ** 31:
        raise ValueError("gallery too large for packed ranking keys (2**31 items)")
    key = _ordered_keys(s)
    key <<= 32
    key |= np.arange(m, dtype=np.int64) << 1  # ties: lower gallery index first
    key |= ~relevant  # the relevance bit rides along; it never changes the order
    key.sort(axis=1)
    return (key & 1) == 0


def _blocks(fn: Any, n: int, block: int = 64) -> list[Any]:
    """fn(start, stop) over row blocks, on a thread per core (numpy's sort and ufuncs release the GIL)."""
    spans = [(a, min(a + block, n)) for a in range(0, n, block)]
    if len(spans) <= 1:
        return [fn(a, b) for a, b in spans]
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, len(spans))) as pool:
        return list(pool.map(lambda ab: fn(*ab), spans))


def ranked_relevance(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """`[n_queries, n_gallery]` booleans: is the item at each rank relevant (same label) to the query."""
    s, q, g = _check(similarity, query_labels, gallery_labels)
    parts = _blocks(lambda a, b: _ranked(s[a:b], q[a:b], g), s.shape[0])
    return np.concatenate(parts) if parts else np.zeros(s.shape, dtype=bool)


def average_precisions(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Per query: the mean over its relevant items of the precision at each one's rank (0 if none)."""
    s, q, g = _check(similarity, query_labels, gallery_labels)

    def block(a: int, b: int) -> np.ndarray:
        rows, ranks = np.nonzero(_ranked(s[a:b], q[a:b], g))  # row-major: each row's hits in rank order
        counts = np.bincount(rows, minlength=b - a)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        k = np.arange(len(rows)) - first[rows] + 1  # the k-th relevant item of its row ...
        sums = np.bincount(rows, weights=k / (ranks + 1.0), minlength=b - a)  # ... has precision k / rank
        return np.divide(sums, counts, out=np.zeros(b - a), where=counts > 0)

    parts = _blocks(block, s.shape[0])
    return np.concatenate(parts) if parts else np.zeros(0)


def mean_average_precision(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> float:
    """MAP over queries (rows); relevance = same label; AP as in TNN-C-CCA's evaluation."""
    return float(average_precisions(similarity, query_labels, gallery_labels).mean())


def precision_at_k(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                   ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Mean over queries of the fraction of relevant items among the top K."""
    rel = ranked_relevance(similarity, query_labels, gallery_labels)
    return {k: float(rel[:, :k].mean()) for k in ks if k <= rel.shape[1]}


def precision_recall_curve(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                           points: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision at `points` recall levels 0..1, averaged over queries with relevant items."""
    rel = ranked_relevance(similarity, query_labels, gallery_labels)
    hits = np.cumsum(rel, axis=1)
    total = hits[:, -1]
    keep = total > 0
    hits, total = hits[keep], total[keep]
    precision = hits / np.arange(1, rel.shape[1] + 1)
    recall = hits / total[:, None]
    # interpolated precision: the best precision at any recall >= r
    best = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    levels = np.linspace(0.0, 1.0, points)
    idx = np.stack([np.argmax(recall >= r - 1e-12, axis=1) for r in levels], axis=1)
    return levels, np.take_along_axis(best, idx, axis=1).mean(axis=0)


def chance_average_precision(query_labels: np.ndarray, gallery_labels: np.ndarray) -> float:
    """The expected MAP of a uniformly random ranking (exact, not sampled).

    For a query with R relevant items among N, a relevant item at rank p has 1 + (p-1)(R-1)/(N-1)
    relevant items at or above it on average, and p is uniform on 1..N, so
    E[AP] = (R-1)/(N-1) + (1 - (R-1)/(N-1)) * H_N / N  (H_N the N-th harmonic number)."""
    q, g = np.asarray(query_labels).reshape(-1), np.asarray(gallery_labels).reshape(-1)
    n = len(g)
    if n == 0 or len(q) == 0:
        return 0.0
    values, counts = np.unique(g, return_counts=True)
    r = np.zeros(len(q))
    pos = np.searchsorted(values, q)
    hit = (pos < len(values)) & (values[np.minimum(pos, len(values) - 1)] == q)
    r[hit] = counts[pos[hit]]
    frac = (r - 1) / (n - 1) if n > 1 else np.zeros_like(r)
    ap = frac + (1 - frac) * np.sum(1.0 / np.arange(1, n + 1)) / n
    return float(np.where(r > 0, ap, 0.0).mean())


def retrieval_metrics(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
                      points: int = 11) -> dict[str, object]:
    """Audio->visual and visual->audio retrieval of one test set: MAP, chance MAP, P@K, PR curve."""
    sim = cosine_similarity(audio, visual)
    out: dict[str, object] = {"n": int(len(labels)), "chance_map": chance_average_precision(labels, labels)}
    for direction, s in (("audio2visual", sim), ("visual2audio", sim.T)):
        out[f"map_{direction}"] = mean_average_precision(s, labels, labels)
        for k, p in precision_at_k(s, labels, labels, ks).items():
            out[f"p@{k}_{direction}"] = p
        recall, precision = precision_recall_curve(s, labels, labels, points)
        out[f"pr_{direction}"] = {"recall": recall.tolist(), "precision": precision.tolist()}
    return out


@dataclass
class RetrievalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    pr_points: int = 11

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or self.pr_points < 2:
            raise ValueError(f"need ks >= 1 and pr_points >= 2, got {self.ks} and {self.pr_points}")


@register_evaluator
class Retrieval:
    """Cross-modal retrieval of train runs' held-out embeddings: MAP, precision@K, PR curves, chance."""

    name: ClassVar[str] = "retrieval"
    VERSION: ClassVar[int] = 1
    Config: ClassVar[type] = RetrievalConfig
    reads: ClassVar[None] = None
    task: ClassVar[str] = "classes"  # reads the runs of trainers on labelled items


# --- Recall@K for paired items (spoken captions of images: several captions per image) -----------------

def _positions(s: np.ndarray) -> np.ndarray:
    """Position (0 = first) of every column in its row's ranking: decreasing similarity, ties by lower column."""
    order = np.argsort(-s, axis=1, kind="stable")
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.broadcast_to(np.arange(s.shape[1]), s.shape), axis=1)
    return pos


def caption_ranks(similarity: np.ndarray, image_of: np.ndarray, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the right answers in `similarity[n_images, n_captions]`: per image, the best
    position of any of its captions (image -> caption); per caption, the position of its image."""
    s = np.asarray(similarity)
    image_of = np.asarray(image_of, dtype=np.int64).reshape(-1)
    n_img, n_cap = s.shape if s.ndim == 2 else (-1, -1)
    if s.ndim != 2 or len(image_of) != n_cap:
        raise ValueError(f"similarity must be [n_images, n_captions] with n_captions = {len(image_of)}, got {s.shape}")
    if n_cap and (image_of.min() < 0 or image_of.max() >= n_img):
        raise ValueError(f"image_of must index the {n_img} images")
    if np.isnan(s).any():
        raise ValueError("similarity contains NaN; check the embeddings (a zero vector?)")
    if len(np.unique(image_of)) != n_img:
        raise ValueError("every image needs at least one caption")
    i2c = np.full(n_img, n_cap, dtype=np.int64)
    for a in range(0, n_img, block):
        pos = _positions(s[a:a + block])
        cols = np.flatnonzero((image_of >= a) & (image_of < a + block))
        np.minimum.at(i2c, image_of[cols], pos[image_of[cols] - a, cols])
    c2i = np.empty(n_cap, dtype=np.int64)
    for a in range(0, n_cap, block):
        pos = _positions(s[:, a:a + block].T)
        c2i[a:a + block] = pos[np.arange(len(pos)), image_of[a:a + block]]
    return i2c, c2i


def rank_summary(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """R@K in percent (rank < K), median rank floor(median) + 1 and mean rank + 1, from 0-based ranks."""
    r = np.asarray(ranks, dtype=np.float64)
    out = {f"r@{k}": float(100.0 * np.mean(r < k)) for k in ks}
    out["medr"] = float(np.floor(np.median(r)) + 1)
    out["meanr"] = float(r.mean() + 1)
    return out


def chance_recall(image_of: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """Expected R@K (percent) of a random ranking, both ways: an image hits when any of its captions is
    in the top K (hypergeometric), a caption when its one image is."""
    image_of = np.asarray(image_of).reshape(-1)
    n_cap = len(image_of)
    per_image = np.bincount(image_of).astype(np.float64)
    n_img = len(per_image)
    i2c, c2i = {}, {}
    for k in ks:
        t = np.arange(min(k, n_cap))
        miss = np.prod((n_cap - per_image[:, None] - t[None, :]).clip(min=0) / (n_cap - t[None, :]), axis=1)
        i2c[f"r@{k}"] = float(100.0 * np.mean(1.0 - miss))
        c2i[f"r@{k}"] = float(100.0 * min(k, n_img) / n_img)
    return {"image2caption": i2c, "caption2image": c2i}


def recall_metrics(images: np.ndarray, captions: np.ndarray, image_of: np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
                   caption: str = "speech", folds: int = 1) -> dict[str, Any]:
    """Image -> caption and caption -> image retrieval by cosine similarity: R@K, medr, meanr, chance;
    `folds` > 1 averages over that many equal slices of the images (with their captions), e.g. 5 x 1000."""
    images, captions = np.asarray(images), np.asarray(captions)
    image_of = np.asarray(image_of, dtype=np.int64).reshape(-1)
    if folds < 1 or folds > len(images):
        raise ValueError(f"folds must be in 1..{len(images)} (the number of images), got {folds}")
    fwd, back = f"image2{caption}", f"{caption}2image"
    per: list[dict[str, Any]] = []
    for part in np.array_split(np.arange(len(images)), folds):
        cols = np.flatnonzero(np.isin(image_of, part))
        sub_of = np.searchsorted(part, image_of[cols])
        i2c, c2i = caption_ranks(cosine_similarity(images[part], captions[cols]), sub_of)
        chance = chance_recall(sub_of, ks)
        per.append({fwd: rank_summary(i2c, ks), back: rank_summary(c2i, ks),
                    "chance": {fwd: chance["image2caption"], back: chance["caption2image"]}})
    out: dict[str, Any] = {"n_images": int(len(images)), "n_captions": int(len(captions)), "folds": folds}
    for d in (fwd, back):
        out[d] = {m: float(np.mean([p[d][m] for p in per])) for m in per[0][d]}
    out["chance"] = {d: {m: float(np.mean([p["chance"][d][m] for p in per])) for m in per[0]["chance"][d]}
                     for d in (fwd, back)}
    out["rsum"] = float(sum(out[d][f"r@{k}"] for d in (fwd, back) for k in ks))
    return out


def caption_recall(emb: dict[str, np.ndarray], image_of: np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
                   folds: int = 1) -> dict[str, Any]:
    """Recall metrics of one split's embeddings (`image` per image, `speech` and/or `text` per caption):
    image <-> speech (rsum counts these; without speech, image <-> text), and image <-> text when there is text."""
    if "speech" not in emb:
        return recall_metrics(emb["image"], emb["text"], image_of, ks, caption="text", folds=folds)
    out = recall_metrics(emb["image"], emb["speech"], image_of, ks, caption="speech", folds=folds)
    if "text" in emb and len(emb["text"]):
        text = recall_metrics(emb["image"], emb["text"], image_of, ks, caption="text", folds=folds)
        out.update({k: text[k] for k in ("image2text", "text2image")})
        out["chance"].update(text["chance"])
    return out


MODALITIES = ("image", "sound", "text")


def chance_medr(per_query: np.ndarray, n: int) -> float:
    """The median rank (1-based, as `rank_summary`) of a random ranking of `n` targets, where query q has
    `per_query[q]` right answers and its rank is that of the first: the smallest t with P(first < t) >= 1/2 over the
    queries, plus one."""
    per_query = np.asarray(per_query, dtype=np.float64).reshape(-1)
    miss = np.ones_like(per_query)  # P(no right answer among the first t) per query
    for t in range(n):
        if np.mean(1.0 - miss) >= 0.5:
            return float(t)
        miss = miss * np.clip((n - per_query - t) / (n - t), 0.0, None)
    return float(n)


def modality_matrix(emb: dict[str, np.ndarray], image_of: np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
                    folds: int = 1, present: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Retrieval between every two modalities of one split (See, Hear, and Read's table): `image` holds a row per
    image, `sound` and `text` a row per item (`image_of[i]`: item i's image). A query's right answers: an image's
    items; an item's image; for sound <-> text, the item's own other half. R@K, medr, meanr and chance per ordered
    pair `<query>2<target>`, averaged over `folds` equal slices of the images with their items (5 x 1000 images).
    `present[m]` (per item) marks the items that have modality m (a mixed corpus: captions without sound, videos
    without text): a pair is scored on the items that have both sides, and left out where none has."""
    mods = [m for m in MODALITIES if m in emb and len(emb[m])]
    image_of = np.asarray(image_of, dtype=np.int64).reshape(-1)
    n_images = int(image_of.max()) + 1 if len(image_of) else 0
    if len(mods) < 2:
        raise ValueError(f"need embeddings of two modalities among {', '.join(MODALITIES)}; got {', '.join(emb)}")
    if folds < 1 or folds > n_images:
        raise ValueError(f"folds must be in 1..{n_images} (the number of images), got {folds}")
    has = {m: np.ones(len(image_of), dtype=bool) if present is None or m not in present else np.asarray(present[m], bool)
           for m in mods}
    pairs = [(a, b) for a_i, a in enumerate(mods) for b in mods[a_i + 1:]
             if (has[b] if a == "image" else has[a] & has[b]).any()]
    per: list[dict[str, dict[str, dict[str, float]]]] = []
    for part in np.array_split(np.arange(n_images), folds):
        out: dict[str, dict[str, dict[str, float]]] = {"matrix": {}, "chance": {}}
        for a, b in pairs:
            both = has[b] if a == "image" else has[a] & has[b]
            cols = np.flatnonzero(np.isin(image_of, part) & both)
            if not len(cols):
                continue
            if a == "image":  # image <-> its items: the images of this fold that have such items
                imgs = np.unique(image_of[cols])
                rows, rel = emb[a][imgs], np.searchsorted(imgs, image_of[cols])
            else:  # item <-> its own other half
                rows, rel = emb[a][cols], np.arange(len(cols))
            fwd, back = caption_ranks(cosine_similarity(rows, emb[b][cols]), rel)
            n_rows, n_cols = len(rows), len(cols)
            for name, ranks, answers, n in ((f"{a}2{b}", fwd, np.bincount(rel, minlength=n_rows), n_cols),
                                            (f"{b}2{a}", back, np.ones(n_cols), n_rows)):
                out["matrix"][name] = rank_summary(ranks, ks)
                hit = [1.0 - np.prod([(n - answers - t) / (n - t) for t in range(min(k, n))], axis=0) for k in ks]
                out["chance"][name] = {**{f"r@{k}": float(100.0 * np.mean(h)) for k, h in zip(ks, hit)},
                                       "medr": chance_medr(answers, n)}
        per.append(out)
    names = list(dict.fromkeys(d for p in per for d in p["matrix"]))
    return {"modalities": mods, "n_images": n_images, "n_items": int(len(image_of)), "folds": folds,
            **{part: {d: {m: float(np.mean([p[part][d][m] for p in per if d in p[part]])) for m in
                          next(p[part][d] for p in per if d in p[part])} for d in names}
               for part in ("matrix", "chance")}}


def sampled_recall_at_10(queries: np.ndarray, gallery: np.ndarray, trials: int = 100, pool: int = 1000,
                         seed: int = 0) -> float:
    """The reference's Recall@10 of paired rows: `trials` times draw `pool` indices with replacement; a
    query hits when its own row is among the 10 smallest cosine distances (ties: lower position first)."""
    q = np.asarray(queries, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    rng = np.random.default_rng(seed)
    hits = []
    col = np.arange(pool)
    for _ in range(trials):
        idx = rng.integers(0, len(q), size=pool)
        dist = 1.0 - cosine_similarity(q[idx], g[idx])
        # the own row's place in a stable sort of its row, without sorting: rows closer, then equal ones before it
        own = dist[col, col][:, None]
        place = (dist < own).sum(axis=1) + ((dist == own) & (col[None, :] < col[:, None])).sum(axis=1)
        hits.append(float((place < 10).sum()))
    return float(np.mean(hits) / pool)


@dataclass
class RecallConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    folds: int = 1  # > 1: average over that many slices of the test images (5 x 1000 on a 5000-image test set)

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or self.folds < 1:
            raise ValueError(f"need ks >= 1 and folds >= 1, got {self.ks} and {self.folds}")


@register_evaluator
class Recall:
    """Caption retrieval of captions train runs' test embeddings: R@K, medr, meanr both ways, chance."""

    name: ClassVar[str] = "recall"
    VERSION: ClassVar[int] = 1
    Config: ClassVar[type] = RecallConfig
    reads: ClassVar[None] = None
    task: ClassVar[str] = "pairs"  # reads the runs of trainers on paired items (pipeline.training.tasks)
