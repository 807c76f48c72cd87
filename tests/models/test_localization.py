"""DSVE-loc localization numerics against brute-force loops and straightforward transcriptions of the reference
(technicolor-research/dsve-loc, misc/localization.py), and on hand-built cases whose answers are known."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import models.dsve.heatmaps as loc
import models.vgs.alignment as al

# --- brute force: the reference's formulas, one cell and one phrase at a time ---------------------------

def _brute_heat(act, phrase, fc, n_max):
    """heat[r, c] = sum over the n_max largest coordinates k of |phrase_k| * sum_ch fc[k, ch] * act[ch, r, c]."""
    n_ch, h, w = act.shape
    ks = list(np.argsort(phrase)[::-1][:n_max])
    heat = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            total = 0.0
            for k in ks:
                total += abs(phrase[k]) * sum(fc[k, ch] * act[ch, r, c] for ch in range(n_ch))
            heat[r, c] = total
    return heat


def _brute_point(heat, input_size, point):
    """The first maximum walking columns outer, rows inner; scaled as the reference: (org_dim[0] / size[0]) * x."""
    h, w = heat.shape
    best = None
    for c in range(w):
        for r in range(h):
            if best is None or heat[r, c] > heat[best]:
                best = (r, c)
    y, x = best
    off = 0.5 if point == "center" else 0.0
    return (input_size[0] / h) * (x + off), (input_size[1] / w) * (y + off)


def _brute_hit(px, py, box, image_size, input_size):
    """regions_scale + is_in_region."""
    W, H = image_size
    fx, fy = box[0] * input_size[0] / W, box[1] * input_size[1] / H
    srw, srh = box[2] * input_size[0] / W, box[3] * input_size[1] / H
    return px > fx and px < fx + srw and py > fy and py < fy + srh


def _random_boxes(rng, n, image_size):
    W, H = image_size
    x, y = rng.uniform(0, 0.7 * W, n), rng.uniform(0, 0.7 * H, n)
    return np.stack([x, y, rng.uniform(0.1, 0.6, n) * W, rng.uniform(0.1, 0.6, n) * H], axis=1)


# --- heatmaps ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, n_max", [((6, 5, 7), 4), ((4, 7, 3), 9), ((5, 4, 4), 50)])
def test_heatmaps_match_brute_force_loops(shape, n_max):
    rng = np.random.default_rng(sum(shape) + n_max)
    act = rng.normal(size=shape)
    fc = rng.normal(size=(12, shape[0]))
    phrases = rng.normal(size=(5, 12))
    got = loc.heatmaps(act, phrases, fc, n_max)
    assert got.shape == (5, *shape[1:])
    for i, p in enumerate(phrases):
        np.testing.assert_allclose(got[i], _brute_heat(act, p, fc, n_max), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(loc.heatmap(act, p, fc, n_max), got[i])


def test_heatmaps_in_float32_follow_the_reference_expression():
    rng = np.random.default_rng(1)
    act = rng.normal(size=(64, 13, 13)).astype(np.float32)
    fc = (rng.normal(size=(96, 64)) / 8).astype(np.float32)
    phrases = rng.normal(size=(7, 96)).astype(np.float32)
    got = loc.heatmaps(act, phrases, fc, 30)
    assert got.dtype == np.float32
    prod = np.dot(fc, act.reshape(64, -1))
    for i, cap in enumerate(phrases):
        order = np.argsort(cap)[::-1]
        want = np.reshape(np.dot(np.abs(cap[order[:30]]), prod[order[:30]]), (13, 13))
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


def test_heatmaps_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="fc_weight"):
        loc.heatmaps(np.zeros((3, 2, 2)), np.zeros((1, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="phrases"):
        loc.heatmaps(np.zeros((3, 2, 2)), np.zeros((1, 5)), np.zeros((4, 3)))


# --- pointing game ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["corner", "center"])
@pytest.mark.parametrize("shape, image_size, input_size", [
    ((6, 5, 7), (640, 480), (416, 416)),
    ((4, 7, 3), (300, 500), (320, 224)),
    ((5, 13, 13), (500, 375), (416, 416)),
])
def test_pointing_game_matches_brute_force(point, shape, image_size, input_size):
    rng = np.random.default_rng(len(point) + shape[1] * 10 + shape[2])
    act = rng.normal(size=shape)
    fc = rng.normal(size=(16, shape[0]))
    phrases = rng.normal(size=(60, 16))
    points = [_brute_point(_brute_heat(act, p, fc, 6), input_size, point) for p in phrases]
    boxes = _random_boxes(rng, 60, image_size)
    for i in range(0, 60, 3):  # every third box around its phrase's point (in image pixels), often holding it
        cx, cy = points[i][0] * image_size[0] / input_size[0], points[i][1] * image_size[1] / input_size[1]
        bw, bh = rng.uniform(0.02, 0.3) * image_size[0], rng.uniform(0.02, 0.3) * image_size[1]
        boxes[i] = [cx - rng.uniform(-0.2, 1) * bw, cy - rng.uniform(-0.2, 1) * bh, bw, bh]
    got = loc.pointing_game(act, phrases, fc, boxes, image_size, input_size, n_max=6, point=point)
    want = [_brute_hit(px, py, b, image_size, input_size) for (px, py), b in zip(points, boxes)]
    assert got.dtype == bool and got.tolist() == want
    assert 0 < sum(want) < len(want)  # both outcomes occur
    heats = loc.heatmaps(act, phrases, fc, 6)
    assert loc.pointing_from_heatmaps(heats, boxes, image_size, input_size, point).tolist() == want


def test_a_tied_maximum_takes_the_first_in_column_major_order():
    fc = np.eye(3)
    phrase = np.array([1.0, 0.5, 0.25])  # n_max = 1: heat = act[0]
    act = np.zeros((3, 3, 4))
    act[0] = [[1, 2, 9, 3],
              [4, 9, 5, 6],
              [7, 8, 0, 2]]  # 9 at (row 0, col 2) and (row 1, col 1): row-major meets (0, 2) first
    heat = loc.heatmap(act, phrase, fc, n_max=1)
    np.testing.assert_array_equal(heat, act[0])
    size = (416, 416)
    # column 1 comes first: x = 1, y = 1 -> (416 / 3 * 1, 416 / 4 * 1) = (138.7, 104); (0, 2) would be (277.3, 0)
    boxes = np.array([[120, 90, 40, 40], [260, -10, 40, 40]], dtype=float)
    got = loc.pointing_game(act, np.stack([phrase, phrase]), fc, boxes, size, size, n_max=1)
    assert got.tolist() == [True, False]
    for b, g in zip(boxes, got):
        assert _brute_hit(*_brute_point(act[0], size, "corner"), b, size, size) == g


def test_hand_built_peak_hits_the_box_it_is_in():
    act = np.zeros((2, 13, 13))
    act[0, 3, 2] = 5.0  # row 3, column 2: corner point (64, 96), centre (80, 112) at 416 x 416
    act[1] = 0.1
    fc = np.array([[1.0, 0.0], [0.0, 1.0]])
    phrases = np.tile([[1.0, -0.01]], (6, 1))
    image = (832, 624)  # x scale 1/2, y scale 2/3
    boxes = np.array([
        [100, 120, 60, 60],   # (50, 80)-(80, 120): contains the corner; the centre sits on its right edge
        [128, 120, 60, 60],   # (64, 80)-(94, 120): the corner sits on its left edge; holds the centre
        [100, 120, 28, 60],   # right edge 64: on the corner point, strictly outside
        [300, 300, 100, 100],  # far away
        [140, 150, 40, 40],   # (70, 100)-(90, 126.7): the centre only
        [0, 0, 832, 624],     # the whole image
    ], dtype=float)
    corner = loc.pointing_game(act, phrases, fc, boxes, image, n_max=2, point="corner")
    center = loc.pointing_game(act, phrases, fc, boxes, image, n_max=2, point="center")
    assert corner.tolist() == [True, False, False, False, False, True]
    assert center.tolist() == [False, True, False, False, True, True]


def test_centre_baseline_on_known_boxes():
    boxes = np.array([[300, 200, 200, 200], [400, 0, 100, 600], [0, 0, 400, 600], [0, 0, 401, 600],
                      [0, 300, 800, 10]], dtype=float)
    # input 416 x 416: the point (208, 208); x scale 0.52, y scale 416 / 600
    assert loc.centre_baseline(boxes, (800, 600)).tolist() == [True, False, False, True, False]
    small = np.array([[319, 239, 2, 2], [320, 200, 10, 100], [0, 0, 640, 240]], dtype=float)
    # input 320 x 240 of a 640 x 480 image: the point (160, 120), scale 1/2
    assert loc.centre_baseline(small, (640, 480), (320, 240)).tolist() == [True, False, False]


def test_pointing_checks_its_arguments():
    with pytest.raises(ValueError, match="point"):
        loc.pointing_from_heatmaps(np.zeros((1, 2, 2)), np.zeros((1, 4)), (10, 10), point="middle")
    with pytest.raises(ValueError, match="one box per heatmap"):
        loc.pointing_from_heatmaps(np.zeros((2, 2, 2)), np.zeros((1, 4)), (10, 10))


# --- semantic segmentation ---------------------------------------------------------------------------------

def _reference_map_at(ious, at):
    """get_map_at and compute_ap, transcribed into plain Python."""
    aps = []
    for pairs in ious.values():
        ranked = sorted(pairs, key=lambda t: t[0], reverse=True)
        y_pred = [float(t[0] > at) for t in ranked]
        npos = sum(t[1] for t in ranked)
        tp = [0.0] * len(ranked)
        fp = [0.0] * len(ranked)
        for i in range(1, len(ranked)):
            if y_pred[i] == 1:
                tp[i] = 1.0
            else:
                fp[i] = 1.0
        ap, rec_prev, ctp, cfp = 0.0, 0.0, 0.0, 0.0
        for k in range(len(ranked)):
            ctp += tp[k]
            cfp += fp[k]
            rec = ctp / npos
            prec = 0.0 if k == 0 else ctp / (cfp + ctp)
            ap += prec * (rec - rec_prev)
            rec_prev = rec
        aps.append(ap)
    return sum(aps) / len(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segmentation_map_matches_the_reference_loop(seed):
    rng = np.random.default_rng(seed)
    ious = {}
    for c in ("person", "dog", "car", "bus", "kite"):
        present = rng.random(40) < rng.uniform(0.2, 0.8)
        present[rng.integers(40)] = True
        values = np.round(rng.random(40), 1)  # ties, and values equal to the thresholds
        ious[c] = [(float(v), 1) if p else (0, 0) for v, p in zip(values, present)]
    got = loc.segmentation_map(ious)
    want = [_reference_map_at(ious, at) for at in (0.3, 0.4, 0.5)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert len(set(got)) > 1


@pytest.mark.parametrize("seed", [3, 4])
def test_segmentation_ap_reduces_to_one_less_than_the_count_above_the_threshold(seed):
    # IoUs above the threshold rank first and each has precision 1, but rank 0 adds no recall:
    # AP = (m - 1) / npos with m the IoUs above the threshold (0 when m = 0)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        present = rng.random(n) < 0.6
        present[0] = True
        pairs = [(float(v), 1) if p else (0, 0) for v, p in zip(rng.random(n), present)]
        m = sum(v > 0.4 for v, _ in pairs)
        assert loc.segmentation_map({"c": pairs}, (0.4,))[0] == pytest.approx(max(m - 1, 0) / present.sum(), abs=1e-12)


def test_segmentation_map_quirks_on_a_hand_case():
    # a perfect ranking: rank 0 counts as neither tp nor fp, so recall stops at 1/2 and AP is 0.5
    assert loc.segmentation_map({"dog": [(0.9, 1), (0.8, 1), (0.0, 0)]}, (0.5,)) == [0.5]
    # below the threshold nothing counts: AP 0
    assert loc.segmentation_map({"dog": [(0.2, 1), (0.1, 1), (0.0, 0)]}, (0.5,)) == [0.0]
    # no positive image anywhere: NaN, and a NaN mean
    assert math.isnan(loc.segmentation_map({"dog": [(0.9, 1), (0.8, 1)], "cat": [(0, 0), (0, 0)]}, (0.5,))[0])
    with pytest.raises(ValueError, match="no .IoU"):
        loc.segmentation_map({"dog": []})


def test_bytescale_rounds_like_scipy():
    x = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    # (x - min) * 255 / (max - min) + 0.5, truncated: 127.5 -> 128, 63.75 -> 64
    np.testing.assert_array_equal(loc._bytescale(x), [[0, 128], [255, 64]])
    np.testing.assert_array_equal(loc._bytescale(np.full((2, 3), 7.0)), np.zeros((2, 3)))


def test_binary_heatmap_thresholds_a_known_map():
    fc = np.ones((1, 1))
    act = np.array([[[0.0, 0.45], [1.0, 0.2]]], dtype=np.float32)  # heat = act[0]: bytes 0, 115, 255, 51
    # threshold 0.45 * 255 = 114.75
    np.testing.assert_array_equal(loc.binary_heatmap(act, np.ones(1), fc, 0.45, (2, 2)), [[0, 1], [1, 0]])
    # 0.46 * 255 = 117.3
    np.testing.assert_array_equal(loc.binary_heatmap(act, np.ones(1), fc, 0.46, (2, 2)), [[0, 0], [1, 0]])
    assert loc.binary_heatmap(act, np.ones(1), fc).dtype == np.int32
    # 0.6 * 255 = 153 exactly, and 0.6 scales to byte 153: strictly above only
    on_edge = np.array([[[0.0, 0.6], [1.0, 0.2]]], dtype=np.float32)
    np.testing.assert_array_equal(loc.binary_heatmap(on_edge, np.ones(1), fc, 0.6, (2, 2)), [[0, 0], [1, 0]])


def test_binary_heatmap_resizes_bilinearly_to_height_by_width():
    rng = np.random.default_rng(4)
    heat = rng.random((3, 5))
    u8 = loc._bytescale(heat)
    up = loc._resize(u8, (60, 90), "bilinear")
    assert up.shape == (60, 90) and up.dtype == np.uint8
    # PIL's bilinear upscaling: half-pixel centres, clamped edges, 8-bit fixed point (within 1)
    assert np.abs(up.astype(float) - al.resize_bilinear(u8.astype(float), (60, 90))).max() <= 1
    binary = loc.binary_heatmap(heat[None], np.ones(1), np.ones((1, 1)), 0.45, (60, 90))
    np.testing.assert_array_equal(binary, (up > 0.45 * (int(up.max()) - int(up.min()))).astype(np.int32))


def test_iou_of_known_masks():
    hm = np.zeros((4, 4), dtype=np.int32)
    hm[0:2, 0:3] = 1  # 6 cells
    mask = np.zeros((4, 4), dtype=np.float32)
    mask[1:3, 1:3] = 1  # 4 cells, 2 of them in hm: 2 / (6 + 4 - 2)
    assert loc.iou(hm, mask) == 0.25
    assert loc.iou(mask.astype(np.int32), mask) == 1.0
    assert math.isnan(loc.iou(np.zeros((2, 2)), np.zeros((2, 2))))


def _uncompressed_rle(m):
    """COCO's uncompressed RLE (crowd regions): run lengths in column-major order, starting with zeros."""
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(m.shape), "counts": [int(c) for c in counts]}


def test_instance_mask_from_polygons_and_rle(tmp_path):
    from pycocotools import mask as mask_utils

    h, w = 100, 200
    dog = np.zeros((h, w), dtype=np.uint8, order="F")
    dog[60:90, 150:190] = 1
    rle = mask_utils.encode(dog)
    rle["counts"] = rle["counts"].decode()
    crowd = np.zeros((h, w), dtype=np.uint8)
    crowd[0:20, 180:200] = 1
    full = mask_utils.encode(np.ones((h, w), dtype=np.uint8, order="F"))
    full["counts"] = full["counts"].decode()
    ann = {"area": 1, "bbox": [0, 0, 1, 1]}
    crowd_rle = _uncompressed_rle(crowd)
    doc = {"images": [{"id": 7, "width": w, "height": h, "file_name": "a.jpg"},
                      {"id": 8, "width": w, "height": h, "file_name": "b.jpg"}],
           "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 3, "name": "car"},
                          {"id": 38, "name": "kite"}, {"id": 17, "name": "cat"}],
           "annotations": [
               {**ann, "id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0,
                "segmentation": [[10, 10, 60, 10, 60, 50, 10, 50]]},
               {**ann, "id": 2, "image_id": 7, "category_id": 18, "iscrowd": 0, "segmentation": rle},
               {**ann, "id": 3, "image_id": 7, "category_id": 18, "iscrowd": 1, "segmentation": crowd_rle},
               {**ann, "id": 4, "image_id": 7, "category_id": 38, "iscrowd": 1, "segmentation": crowd_rle},
               {**ann, "id": 5, "image_id": 8, "category_id": 17, "iscrowd": 0, "segmentation": full}]}
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps(doc))
    masks = al.CocoMasks(path)

    got = loc.instance_mask(masks, 7, "dog", (50, 100))
    assert got.shape == (50, 100) and got.dtype == np.float32
    # nearest halving samples source pixel 2i + 1: rows 60..89 -> 30..44, columns 150..189 -> 75..94;
    # the crowd region rows 0..19 -> 0..9, columns 180..199 -> 90..99
    want = np.zeros((50, 100), dtype=np.float32)
    want[30:45, 75:95] = 1
    want[0:10, 90:100] = 1
    np.testing.assert_array_equal(got, want)

    person = loc.instance_mask(masks, 7, "person", (50, 100))
    ys, xs = np.nonzero(person)
    # the polygon x 10..60, y 10..50 -> about 5..30 and 5..25 at half size
    assert abs(xs.min() - 5) <= 1 and abs(xs.max() - 29) <= 1 and abs(ys.min() - 5) <= 1 and abs(ys.max() - 24) <= 1
    assert person.sum() == pytest.approx(25 * 20, rel=0.1)
    assert not (person * got).any()
    assert loc.instance_mask(masks, 7, "car", (50, 100)).sum() == 0
    # the reference's byte scaling: a mask covering every pixel equally comes out empty
    assert loc.instance_mask(masks, 8, "cat", (50, 100)).sum() == 0
    with pytest.raises(KeyError, match="zebra"):
        loc.instance_mask(masks, 7, "zebra")
    # crowd-only categories are present for the reference
    assert set(loc.annotated_categories(masks, 7)) == {"person", "dog", "kite"}
    assert "kite" not in masks.image_categories(7)


def test_category_sentence():
    assert loc.category_sentence("dog") == "dog dogs"
    assert loc.category_sentence("hot dog") == "hot dog hot dogs"
