"""Alignment and glancing scores against brute-force loops, word spans on a known utterance, masks from
polygons and RLE."""
from __future__ import annotations

import json

import numpy as np
import pytest

import models.vgs.alignment as al


def _brute(scores, softmax=True):
    """The reference's prepare_tensors, written as loops."""
    t, n = scores.shape
    sa = np.zeros_like(scores)
    ta = np.zeros_like(scores)
    for i in range(t):
        e = np.exp(scores[i] - scores[i].max())
        sa[i] = e / e.sum() if softmax else scores[i]
    for p in range(n):
        e = np.exp(scores[:, p] - scores[:, p].max())
        ta[:, p] = e / e.sum() if softmax else scores[:, p]
    sa, ta = np.clip(sa, 0, None).reshape(t, 14, 14), np.clip(ta, 0, None).reshape(t, 14, 14)
    up = np.zeros((t * 8, 224, 224))
    upt = np.zeros((t * 8, 224, 224))
    for i in range(t * 8):
        for y in range(14):
            for x in range(14):
                up[i, y * 16:(y + 1) * 16, x * 16:(x + 1) * 16] = sa[i // 8, y, x]
                upt[i, y * 16:(y + 1) * 16, x * 16:(x + 1) * 16] = ta[i // 8, y, x]
    return up, upt


def _loop_scores(sa, ta, mask, on, off):
    """The formulas of the issue, one term at a time."""
    T = sa.shape[0]
    m = sum(sa[t] for t in range(on, off))
    gs_object = (mask * m).sum() / m.sum()
    s = np.array([(mask * ta[t]).sum() for t in range(T)])
    gs_word = sum(s[t] for t in range(on, off)) / s.sum()
    as_object = np.mean([(mask * sa[t]).sum() / sa[t].sum() for t in range(on, off)])
    tot = ta.sum(axis=0)
    as_word = sum((mask * ta[t] / tot).sum() for t in range(on, off)) / mask.size
    return {"gs_object": gs_object, "gs_word": gs_word, "as_object": as_object, "as_word": as_word}


@pytest.mark.parametrize("softmax", [True, False])
def test_scores_match_brute_force_loops(softmax):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(64, 196)) * 3
    if not softmax:
        scores = np.abs(scores) + 0.1
    sa, ta = al.attention_maps(scores, softmax=softmax)
    bsa, bta = _brute(scores, softmax)
    np.testing.assert_allclose(sa, bsa, rtol=1e-12)
    np.testing.assert_allclose(ta, bta, rtol=1e-12)
    mask = np.zeros((224, 224))
    mask[30:130, 50:200] = 1
    mask[150:170, 5:17] = 1  # cuts across cells
    for on, off in [(0, 512), (37, 90), (200, 201), (505, 512)]:
        want = _loop_scores(bsa, bta, mask, on, off)
        got = al.full_scores(sa, ta, mask, on, off)
        fast = al.source_scores(*al.source_maps(scores, softmax=softmax), mask, on, off)
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-10), (k, on, off)
            assert fast[k] == pytest.approx(want[k], rel=1e-10), (k, on, off)


def test_attention_on_the_object_scores_higher_than_elsewhere():
    scores = np.zeros((64, 196))
    scores[10:20, 3 * 14 + 4] = 10.0  # frames 80-160 look at cell (3, 4)
    mask = np.zeros((224, 224))
    mask[48:64, 64:80] = 1  # cell (3, 4)
    on_word = al.source_scores(*al.source_maps(scores), mask, 80, 160)
    off_word = al.source_scores(*al.source_maps(scores), mask, 300, 380)
    assert on_word["gs_object"] > 0.9 and off_word["gs_object"] < 0.05
    assert on_word["as_word"] > off_word["as_word"]


def test_word_spans_of_a_known_utterance():
    words = [("a", 0.05, 0.2), ("red", 0.2, 0.41), ("circle", 0.414, 0.9), ("far", 5.2, 5.5), ("away", 5.11, 5.3)]
    spans = al.word_spans(words, n_frames=300)
    pad = 512 - 300
    # onsets are ceil(ms / 10): 5, 20, 42 (414 ms -> 42), 520; offset = next onset; the word at 520 and
    # every word after it are dropped, and so is "circle", whose offset reaches 520 >= 512
    assert spans == [(0, "a", 5 + pad, 20 + pad), (1, "red", 20 + pad, 42 + pad)]
    short = al.word_spans(words[:3], n_frames=600)  # longer than 512: no padding; last offset = onset + 2
    assert short == [(0, "a", 5, 20), (1, "red", 20, 42), (2, "circle", 42, 44)]
    assert al.word_spans([("x", 0.07, 0.1)], n_frames=512) == [(0, "x", 7, 9)]  # 0.07 * 100 is not 8


def test_words_are_matched_to_categories_by_name_plural_synonym_and_two_word_names():
    spans = [(0, "two", 0, 5), (1, "Men", 5, 9), (2, "eating", 9, 12), (3, "hot", 12, 14), (4, "dogs", 14, 20),
             (5, "near", 20, 22), (6, "buses", 22, 30), (7, "and", 30, 31), (8, "a", 31, 32), (9, "giraffe", 32, 40)]
    got = al.match_categories(spans, ["person", "hot dog", "bus", "dog"])
    assert [(m.word, m.category, m.onset, m.offset) for m in got] == [
        ("Men", "person", 5, 9), ("hot dogs", "hot dog", 12, 20), ("buses", "bus", 22, 30)]


def test_word_vectors_match_what_names_do_not(tmp_path):
    from models.common.text import load_word_vectors

    path = tmp_path / "vectors.txt"
    vecs = {"puppy": [1, 0, 0], "hound": [0.9, 0.1, 0], "dog": [1, 0.05, 0], "car": [0, 1, 0], "red": [0, 0, 1]}
    path.write_text(f"{len(vecs)} 3\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vecs.items()))
    kv = load_word_vectors(str(path))
    spans = [(0, "hound", 0, 5), (1, "red", 5, 9)]
    assert al.match_categories(spans, ["dog", "car"]) == []
    got = al.match_categories(spans, ["dog", "car"], vectors=kv)
    assert [(m.word, m.category, m.how) for m in got] == [("hound", "dog", "vectors")]


def test_masks_from_polygons_and_rle(tmp_path):
    from pycocotools import mask as mask_utils

    h, w = 100, 200
    rle_src = np.zeros((h, w), dtype=np.uint8, order="F")
    rle_src[60:90, 150:190] = 1
    rle = mask_utils.encode(rle_src)
    rle["counts"] = rle["counts"].decode()
    doc = {"images": [{"id": 7, "width": w, "height": h, "file_name": "x.jpg"}],
           "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
           "annotations": [
               {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1],
                "segmentation": [[10, 10, 60, 10, 60, 50, 10, 50]]},
               {"id": 2, "image_id": 7, "category_id": 18, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1],
                "segmentation": rle}]}
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps(doc))
    masks = al.CocoMasks(path)
    assert masks.categories == ["person", "car", "dog"] or masks.categories == ["person", "dog", "car"]
    assert masks.image_categories(7) == [c for c in masks.categories if c in ("person", "dog")]
    person = masks.mask(7, "person")
    dog = masks.mask(7, "dog")
    assert person.shape == (224, 224)
    # the polygon x 10..60 of 200, y 10..50 of 100 -> about x 11..67, y 22..112 at 224 x 224
    ys, xs = np.nonzero(person)
    assert abs(xs.min() - 11) <= 2 and abs(xs.max() - 68) <= 2 and abs(ys.min() - 22) <= 3 and abs(ys.max() - 114) <= 3
    ys, xs = np.nonzero(dog)
    assert abs(xs.min() - 168) <= 2 and abs(xs.max() - 212) <= 2 and abs(ys.min() - 134) <= 3 and abs(ys.max() - 201) <= 3
    assert not (person * dog).any()
    assert masks.mask(7, "car").sum() == 0


def test_bilinear_resize_matches_half_pixel_centres():
    x = np.arange(16, dtype=np.float64).reshape(4, 4)
    up = al.resize_bilinear(x, (8, 8))
    assert up[0, 0] == 0 and up[-1, -1] == 15
    # output pixel 1 sits at input 0.25: weights 0.75 on index 0 and 0.25 on index 1 in each axis
    assert up[1, 1] == pytest.approx(x[0, 0] * 0.75 * 0.75 + x[0, 1] * 0.75 * 0.25 + x[1, 0] * 0.25 * 0.75 + x[1, 1] * 0.25 * 0.25)
    down = al.resize_bilinear(x, (2, 2))
    assert down[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)


def test_random_baseline_scores_are_the_score_functions_on_the_random_tensor():
    rng = np.random.default_rng(3)
    rand = rng.random((512, 224, 224), dtype=np.float32)
    mask = np.zeros((224, 224))
    mask[40:120, 100:180] = 1
    want = al.full_scores(rand.astype(np.float64), rand.astype(np.float64), mask, 100, 180)
    got = al.random_scores(rand, rand.sum(axis=0, dtype=np.float64), mask, 100, 180, 100, 180)
    for k in want:
        assert got[f"random_{k}"] == pytest.approx(want[k], rel=1e-5)
    assert got["random_gs_object"] == pytest.approx(mask.mean(), abs=0.01)  # uniform noise: the mask's area share
