"""Localization numerics of DSVE-loc (Engilberge et al., CVPR 2018): phrase heatmaps, the pointing game and
semantic segmentation mAP, as the reference code (technicolor-research/dsve-loc: misc/localization.py, called
by pointing_game.py and semantic_seg.py) computes them.

- `heatmap` / `heatmaps`: the image head's 1x1-conv output `act_map [C, h, w]` mapped through the head's linear
  weight `fc_weight [D, C]` (`prod = fc_weight @ act_map`, once per image), then per phrase the sum over the
  `n_max` largest phrase coordinates k (`np.argsort(phrase)[::-1][:n_max]`) of `|phrase_k| * prod_k`.
- `pointing_game` / `pointing_from_heatmaps`: the heatmap's argmax cell, first maximum in column-major order
  (the reference's `np.unravel_index(heat.T.argmax(), heat.T.shape)`: x = column, y = row), mapped to the
  network input (`input_size = (W_in, H_in)`, 416 x 416 in the reference); a hit when that point is strictly
  inside the phrase's box (x, y, w, h in the original image's pixels) scaled to the input.
  `centre_baseline`: the same test for the point (W_in / 2, H_in / 2).
- `binary_heatmap`, `instance_mask`, `iou`, `segmentation_map`: the reference's semantic segmentation. A
  category's heatmap (`n_max = 10`, the sentence "name names") is byte-scaled to uint8 and bilinearly resized
  to `out_dim` (scipy.misc.imresize, i.e. scipy's bytescale then PIL), then `> c_thresh * (max - min)`; the
  category's instances are summed, byte-scaled, nearest-resized and `> 0`; IoU; then `get_map_at`.
  `annotated_categories`: the categories an image has for the reference, crowd regions included
  (`CocoMasks.image_categories` leaves crowd regions out); every other category scores (IoU 0, absent).

Reference quirks kept on purpose (they change numbers):
- Point scaling uses the map's axes crosswise: x (a column index) is scaled by `input_W / h_cells` and y (a
  row index) by `input_H / w_cells` (the reference's `org_dim[0] / size[0] * x` with `size = act_map.shape[1:]`).
  It only matters for non-square maps; the reference's square 416 x 416 input gives a square map.
- The point is the cell's top-left corner (`point="corner"`); the box test uses strict inequalities, with the
  box's far edges computed as `bx + bw` after scaling; the arithmetic follows the reference's operation order.
- Byte scaling is min-max to [0, 255] with `+ 0.5` and truncation, in the heatmap's float precision (scipy
  1.1's `bytescale`); a constant map becomes all zeros. The mask goes through the same byte scaling before its
  nearest-neighbour resize, so a mask that covers every pixel equally comes out empty, as in the reference.
- `iou` of an empty heatmap and an empty mask is NaN (0 / 0), as in the reference.
- `segmentation_map` is `get_map_at` exactly: per category, IoUs sorted in decreasing order (Python's stable
  sort: NaN IoUs land where the reference's sort puts them); "tp" counts ranks whose IoU is above the
  threshold and "fp" the others, whatever the ground truth (ground truth only gives `npos`); rank 0 counts as
  neither (the loop starts at 1), so a perfect ranking does not reach AP 1; `prec[0] = 0`; `rec = tp / npos`;
  AP = sum over ranks of `prec_k * (rec_k - rec_{k-1})` (no interpolation); the mean over categories. A
  category with no positive (npos = 0) has AP NaN, and so has the mean. Since the IoUs above the threshold
  rank first, each at precision 1, a category's AP comes down to (m - 1) / npos, m the number of its IoUs
  above the threshold (0 when m = 0); the code still runs the reference's steps, which NaN IoUs can reorder.

Deviations from the reference:
- Polygons are rasterised by pycocotools (`COCO.annToMask`, through `models.vgs.alignment.CocoMasks`), not by
  OpenCV's `fillPoly` on vertices truncated to int32: boundary pixels can differ before the resize. Instance
  masks are summed (the reference sets polygon pixels to 1 and adds RLE masks); that can only change which
  pixels survive the byte scaling when more than 510 instances overlap.
- `point="center"` (the cell's centre, `(x + 0.5)` with the same scaling) is ours; the reference scores only
  the corner. Its unused options (`bilinear=True`, centre crops `cc`) are not implemented.
- The heatmaps of many phrases are one batched `matmul` of gathered rows (the reference: one `np.dot` per
  phrase). They agreed bit for bit in our check (numpy's bundled OpenBLAS, float32, 2400 channels, 13 x 13);
  another BLAS could round differently at the last bit, which can only move the argmax between cells equal to
  within rounding.
- Resizing runs on the installed Pillow; the reference ran Pillow 5.3.0 (same bilinear and nearest
  algorithms for these sizes, as far as we know). numpy promotions are reproduced as numpy 1.15 did them
  (bytescale in the map's float precision, the threshold comparison in float64).
- The image size for the masks comes from the annotation file (`height`, `width`); the reference read it from
  the decoded image file (the same for COCO).
- An empty IoU list for a category, or no category at all, raises ValueError (the reference: IndexError on
  `prec[0]`, or a NaN mean); so does byte-scaling a map with NaN or infinite values (the reference casts them
  to an undefined byte).
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from models.vgs.alignment import CocoMasks

log = logging.getLogger(__name__)

INPUT_SIZE = (416, 416)  # the pointing game's network input (W, H), pointing_game.py's in_dim
POINTS = ("corner", "center")
_CHUNK_BYTES = 1 << 26  # gathered rows of prod per batched product


# --- heatmaps -----------------------------------------------------------------------------------------

def _check(act_map: np.ndarray, phrases: np.ndarray,
           fc_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, p, w = np.asarray(act_map), np.asarray(phrases), np.asarray(fc_weight)
    if a.ndim != 3:
        raise ValueError(f"act_map must be [C, h, w] (one image's 1x1-conv output), got shape {a.shape}")
    if w.ndim != 2 or w.shape[1] != a.shape[0]:
        raise ValueError(f"fc_weight must be [D, C] with C = {a.shape[0]} (the act map's channels), got {w.shape}")
    if p.ndim not in (1, 2) or p.shape[-1] != w.shape[0]:
        raise ValueError(f"phrases must be [n, D] (or [D]) with D = {w.shape[0]} (fc_weight's rows), got {p.shape}")
    dtype = np.result_type(a, p, w, np.float32)
    return a.astype(dtype, copy=False), np.atleast_2d(p).astype(dtype, copy=False), w.astype(dtype, copy=False)


def heatmaps(act_map: np.ndarray, phrases: np.ndarray, fc_weight: np.ndarray, n_max: int = 180) -> np.ndarray:
    """Heatmaps `[n, h, w]` of phrases `[n, D]` over one image's act map `[C, h, w]` (fc_weight @ act_map once)."""
    a, p, w = _check(act_map, phrases, fc_weight)
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    c, h, wd = a.shape
    prod = w @ a.reshape(c, h * wd)  # [D, h*w]
    order = np.argsort(p, axis=1)[:, ::-1][:, :n_max]  # the reference's order, row by row
    weights = np.abs(np.take_along_axis(p, order, axis=1))
    out = np.empty((len(p), h * wd), dtype=prod.dtype)
    step = max(1, _CHUNK_BYTES // max(1, order.shape[1] * h * wd * prod.itemsize))
    for s in range(0, len(p), step):
        out[s:s + step] = np.matmul(weights[s:s + step, None, :], prod[order[s:s + step]])[:, 0]
    return out.reshape(len(p), h, wd)


def heatmap(act_map: np.ndarray, phrase: np.ndarray, fc_weight: np.ndarray, n_max: int = 180) -> np.ndarray:
    """Heatmap `[h, w]` of one phrase `[D]`: sum over its n_max largest coordinates k of |phrase_k| (W @ A)_k."""
    p = np.asarray(phrase)
    if p.ndim != 1:
        raise ValueError(f"phrase must be [D], got shape {p.shape}; use heatmaps() for several")
    return heatmaps(act_map, p[None], fc_weight, n_max)[0]


# --- pointing game ------------------------------------------------------------------------------------

def heatmap_points(heats: np.ndarray, input_size: Sequence[float], point: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference's point of each heatmap in input pixels (first maximum in column-major order)."""
    if point not in POINTS:
        raise ValueError(f"point must be one of {POINTS}, got {point!r}")
    n, h, w = heats.shape
    idx = heats.transpose(0, 2, 1).reshape(n, w * h).argmax(axis=1)  # heat.T.argmax()
    x, y = np.divmod(idx, h)  # unravel over heat.T's shape (w, h): x = column, y = row
    off = 0.5 if point == "center" else 0.0
    # the reference: x = (org_dim[0] / size[0]) * x with size = (h, w), crosswise for non-square maps
    return (float(input_size[0]) / h) * (x + off), (float(input_size[1]) / w) * (y + off)


def _inside(px: np.ndarray | float, py: np.ndarray | float, boxes: np.ndarray, image_size: Sequence[float],
            input_size: Sequence[float]) -> np.ndarray:
    """Strictly inside each box (x, y, w, h in image pixels) scaled to the input: `regions_scale`, `is_in_region`."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    W, H = float(image_size[0]), float(image_size[1])
    iw, ih = float(input_size[0]), float(input_size[1])
    bx, by = b[:, 0] * iw / W, b[:, 1] * ih / H
    bw, bh = b[:, 2] * iw / W, b[:, 3] * ih / H
    return (px > bx) & (px < bx + bw) & (py > by) & (py < by + bh)


def pointing_from_heatmaps(heats: np.ndarray, boxes: np.ndarray, image_size: Sequence[float],
                           input_size: Sequence[float] = INPUT_SIZE, point: str = "corner") -> np.ndarray:
    """Pointing-game hits `[n]` of stored heatmaps `[n, h, w]` against boxes `[n, 4]` (x, y, w, h) of one image."""
    hm = np.asarray(heats)
    if hm.ndim != 3:
        raise ValueError(f"heats must be [n, h, w], got shape {hm.shape}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) != len(hm):
        raise ValueError(f"one box per heatmap: {len(hm)} heatmaps, {len(b)} boxes")
    px, py = heatmap_points(hm, input_size, point)
    return _inside(px, py, b, image_size, input_size)


def pointing_game(act_map: np.ndarray, phrases: np.ndarray, fc_weight: np.ndarray, boxes: np.ndarray,
                  image_size: Sequence[float], input_size: Sequence[float] = INPUT_SIZE, n_max: int = 180,
                  point: str = "corner") -> np.ndarray:
    """Pointing-game hits `[n]` of one image's phrases `[n, D]`, boxes `[n, 4]` (x, y, w, h) and image_size (W, H)."""
    return pointing_from_heatmaps(heatmaps(act_map, phrases, fc_weight, n_max), boxes, image_size, input_size, point)


def centre_baseline(boxes: np.ndarray, image_size: Sequence[float],
                    input_size: Sequence[float] = INPUT_SIZE) -> np.ndarray:
    """Hits `[n]` of the point that is always the input's centre (W_in / 2, H_in / 2), with the same strict test."""
    return _inside(float(input_size[0]) / 2, float(input_size[1]) / 2, boxes, image_size, input_size)


# --- semantic segmentation ----------------------------------------------------------------------------

def _bytescale(x: np.ndarray) -> np.ndarray:
    """scipy 1.1's `bytescale` (what `imresize` does first): min-max to [0, 255], + 0.5, truncated to uint8."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    lo, hi = x.min(), x.max()
    span = hi - lo
    if not np.isfinite(span):
        raise ValueError("cannot byte-scale a map with NaN or infinite values; check the embeddings and act maps")
    scale = dtype.type(255.0 / float(span if span != 0 else 1))
    d = (x - lo).astype(dtype, copy=False) * scale
    return (np.clip(d, 0, 255) + dtype.type(0.5)).astype(np.uint8)


def _resize(img: np.ndarray, out_dim: Sequence[int], how: str) -> np.ndarray:
    """PIL resize of a uint8 `[H, W]` image to out_dim = (height, width) (PIL takes (width, height))."""
    from PIL import Image

    resample = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}[how]
    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))  # mode "L"
    return np.asarray(im.resize((int(out_dim[1]), int(out_dim[0])), resample=resample))


def binary_heatmap(act_map: np.ndarray, concept: np.ndarray, fc_weight: np.ndarray, c_thresh: float = 0.45,
                   out_dim: Sequence[int] = (200, 200), n_max: int = 10) -> np.ndarray:
    """The concept's heatmap byte-scaled, bilinearly resized to out_dim (H, W) and `> c_thresh * (max - min)`, int32."""
    hm = _resize(_bytescale(heatmap(act_map, concept, fc_weight, n_max)), out_dim, "bilinear")
    thresh = c_thresh * (int(hm.max()) - int(hm.min()))
    return (hm > thresh).astype(np.int32)


def annotated_categories(masks: "CocoMasks", image_id: int) -> list[str]:
    """Categories with any annotation in the image, crowd regions included (the reference's presence rule)."""
    coco = masks.coco
    ids = {a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))}
    return [c["name"] for c in coco.loadCats(coco.getCatIds()) if c["id"] in ids]


def instance_mask(masks: "CocoMasks", image_id: int, category: str,
                  out_dim: Sequence[int] = (200, 200)) -> np.ndarray:
    """The category's instances (polygons, RLE, crowd too) summed, byte-scaled, nearest-resized to out_dim, > 0."""
    coco = masks.coco
    cat_ids = coco.getCatIds(catNms=[category])
    if not cat_ids:
        raise KeyError(f"category {category!r} is not in {masks.path}; its categories: {masks.categories}")
    img = coco.loadImgs(image_id)[0]
    total = np.zeros((img["height"], img["width"]), dtype=np.float64)
    with warnings.catch_warnings():  # pycocotools on numpy 2: a DeprecationWarning per decoded RLE
        warnings.simplefilter("ignore", DeprecationWarning)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=cat_ids)):
            total += coco.annToMask(ann)
    return (_resize(_bytescale(total), out_dim, "nearest") > 0).astype(np.float32)


def iou(hm: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union of a binary heatmap and a binary mask (NaN when both are empty, as the reference)."""
    hm, mask = np.asarray(hm), np.asarray(mask)
    if hm.shape != mask.shape:
        raise ValueError(f"heatmap {hm.shape} and mask {mask.shape} differ in shape")
    inter = np.sum(hm * mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(inter / (np.sum(mask) + np.sum(hm) - inter))


def _ap_at(pairs: Sequence[tuple[float, int]], at: float) -> np.float64:
    """The reference's AP of one category's (IoU, is-present) pairs at one IoU threshold, quirks included."""
    scores = [p[0] for p in pairs]
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any():  # Python's sort order around NaN, as the reference's sorted()
        pred = s[sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)] > at
    else:
        pred = np.sort(s)[::-1] > at
    npos = np.sum([p[1] for p in pairs])
    tp, fp = np.zeros(len(s)), np.zeros(len(s))
    tp[1:], fp[1:] = pred[1:], ~pred[1:]  # rank 0 counts as neither
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = tp / npos
        prec = tp / (fp + tp)
    prec[0] = 0
    return np.cumsum(prec * np.diff(rec, prepend=0.0))[-1]  # sequential sum, as the reference's loop


def segmentation_map(ious: Mapping[str, Sequence[tuple[float, int]]],
                     thresholds: Sequence[float] = (0.3, 0.4, 0.5)) -> list[float]:
    """The reference's mAP (`get_map_at`) at each IoU threshold; ious: category -> [(IoU, present 0/1)] per image."""
    if not ious:
        raise ValueError("no category to score: ious is empty")
    empty = [c for c, v in ious.items() if len(v) == 0]
    if empty:
        raise ValueError(f"categories with no (IoU, present) pair: {empty[:5]}; score every image for every category")
    no_pos = [c for c, v in ious.items() if not any(p[1] for p in v)]
    if no_pos:
        log.warning("%d categories have no positive image (%s); their AP is NaN, as is the mean (the reference's "
                    "behaviour)", len(no_pos), ", ".join(no_pos[:5]))
    return [float(np.mean([_ap_at(v, at) for v in ious.values()])) for at in thresholds]


def category_sentence(name: str) -> str:
    """The sentence a category is embedded as: its name and its plural ("dog dogs"), as the reference."""
    return f"{name} {name}s"
