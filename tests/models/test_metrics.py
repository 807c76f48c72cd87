"""Retrieval metrics against brute-force per-query references."""
import numpy as np
import pytest

from models.common.metrics import (
    average_precisions,
    cosine_similarity,
    mean_average_precision,
    precision_at_k,
    precision_recall_curve,
)


def brute_force_ap(sim, q, g):
    """The TNN-C-CCA loop: rank by decreasing similarity (ties: lower gallery index first), then
    average the precision at each relevant item's rank."""
    out = []
    for i in range(sim.shape[0]):
        order = sorted(range(sim.shape[1]), key=lambda j: (-sim[i, j], j))
        hits, total = 0, 0.0
        for rank, j in enumerate(order, 1):
            if g[j] == q[i]:
                hits += 1
                total += hits / rank
        out.append(total / hits if hits else 0.0)
    return np.array(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [37, 203])  # one row block, and several on threads (64 rows each)
def test_map_equals_brute_force_on_random_data(dtype, n):
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((n, 53)).astype(dtype)
    q, g = rng.integers(0, 4, n), rng.integers(0, 4, 53)
    np.testing.assert_allclose(average_precisions(sim, q, g), brute_force_ap(sim, q, g), rtol=0, atol=1e-12)
    assert mean_average_precision(sim, q, g) == pytest.approx(brute_force_ap(sim, q, g).mean(), abs=1e-12)


def test_ties_are_broken_by_gallery_order():
    rng = np.random.default_rng(1)
    sim = rng.integers(-2, 3, (140, 60)).astype(np.float32)  # many exact ties, negative and zero too
    sim[0] = 0.0
    sim[1, ::2] = -0.0  # equal to 0.0: ties with it, by gallery order
    sim[1, 1::2] = 0.0
    q, g = rng.integers(0, 3, 140), rng.integers(0, 3, 60)
    np.testing.assert_allclose(average_precisions(sim, q, g), brute_force_ap(sim, q, g), atol=1e-12)
    # an all-tied row ranks the gallery in order: AP is computable by hand
    g2 = np.array([1, 0, 1, 0])
    assert average_precisions(np.zeros((1, 4)), np.array([1]), g2)[0] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_float64_similarities_that_float32_would_merge_keep_their_order():
    sim = np.array([[1.0, 1.0 + 1e-12, 0.5]])
    assert average_precisions(sim, np.array([0]), np.array([0, 1, 1]))[0] == pytest.approx(1 / 2)


def test_query_without_relevant_items_scores_zero_and_bad_input_is_refused():
    assert list(average_precisions(np.ones((2, 3)), np.array([5, 0]), np.array([0, 0, 1]))) == [0.0, 1.0]
    with pytest.raises(ValueError, match="must be \\[n_queries, n_gallery\\] = \\[2, 3\\]"):
        mean_average_precision(np.ones((3, 2)), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.full((1, 1), np.nan), np.zeros(1), np.zeros(1))


def test_precision_at_k_and_pr_curve_match_references():
    rng = np.random.default_rng(2)
    sim = rng.standard_normal((20, 30))
    q, g = rng.integers(0, 3, 20), rng.integers(0, 3, 30)
    orders = [sorted(range(30), key=lambda j: (-sim[i, j], j)) for i in range(20)]
    rel = np.array([[g[j] == q[i] for j in o] for i, o in enumerate(orders)])
    assert precision_at_k(sim, q, g, (1, 5)) == pytest.approx({1: rel[:, 0].mean(), 5: rel[:, :5].mean()})
    levels, prec = precision_recall_curve(sim, q, g, points=11)
    want = []
    for r in levels:
        per_query = []
        for row in rel:
            hits = np.cumsum(row)
            p, rec = hits / np.arange(1, 31), hits / hits[-1]
            per_query.append(max(p[j] for j in range(30) if rec[j] >= r - 1e-12))
        want.append(np.mean(per_query))
    np.testing.assert_allclose(prec, want, atol=1e-12)
    assert prec[0] >= prec[-1] and levels[0] == 0 and levels[-1] == 1


def test_cosine_similarity_is_scale_free():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((5, 6))
    s = cosine_similarity(a * 7.0, b)
    np.testing.assert_allclose(s, (a / np.linalg.norm(a, axis=1)[:, None]) @ (b / np.linalg.norm(b, axis=1)[:, None]).T)
    assert np.abs(s).max() <= 1 + 1e-12


def test_chance_map_is_the_exact_expectation_over_all_rankings():
    import itertools

    from models.common.metrics import chance_average_precision

    q = np.array([0, 1, 1, 2, 5])  # label 5 has no relevant item: AP 0
    g = np.array([0, 1, 1, 0, 2, 1])
    aps = []
    for perm in itertools.permutations(range(len(g))):
        s = np.empty(len(g))
        s[list(perm)] = -np.arange(len(g), dtype=float)  # gallery item perm[r] at rank r
        aps.append(mean_average_precision(np.tile(s, (len(q), 1)), q, g))
    assert chance_average_precision(q, g) == pytest.approx(np.mean(aps), abs=1e-12)


# --- Recall@K of captions (several per image) ------------------------------------------------------

def _naive_caption_ranks(s: np.ndarray, image_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_img, n_cap = s.shape
    i2c = []
    for i in range(n_img):
        order = sorted(range(n_cap), key=lambda j: (-s[i, j], j))
        i2c.append(min(order.index(j) for j in range(n_cap) if image_of[j] == i))
    c2i = []
    for j in range(n_cap):
        order = sorted(range(n_img), key=lambda i: (-s[i, j], i))
        c2i.append(order.index(image_of[j]))
    return np.array(i2c), np.array(c2i)


def test_caption_ranks_match_a_loop_with_ties_and_uneven_captions():
    from models.common.metrics import caption_ranks

    rng = np.random.default_rng(0)
    image_of = np.array([0, 0, 1, 2, 2, 2, 3, 1, 0])
    s = rng.integers(0, 4, size=(4, 9)).astype(np.float32)  # many ties
    got = caption_ranks(s, image_of, block=2)
    want = _naive_caption_ranks(s, image_of)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_recall_summary_medr_meanr_and_perfect_retrieval():
    from models.common.metrics import rank_summary, recall_metrics

    r = rank_summary(np.array([0, 0, 3, 9, 20]), (1, 5, 10))
    assert r == {"r@1": 40.0, "r@5": 60.0, "r@10": 80.0, "medr": 4.0, "meanr": pytest.approx(7.4)}
    assert rank_summary(np.array([0, 1]))["medr"] == 1.0  # floor(0.5) + 1
    images = np.eye(6)
    image_of = np.repeat(np.arange(6), 5)
    m = recall_metrics(images, images[image_of] + 0.01, image_of)
    assert m["image2speech"]["r@1"] == 100.0 and m["speech2image"]["medr"] == 1.0
    assert m["rsum"] == 600.0 and m["n_images"] == 6 and m["n_captions"] == 30


def test_chance_recall_is_what_random_rankings_get():
    from models.common.metrics import caption_ranks, chance_recall

    rng = np.random.default_rng(3)
    image_of = np.repeat(np.arange(20), 5)
    hits = {"i": [], "c": []}
    for _ in range(400):
        i2c, c2i = caption_ranks(rng.random((20, 100)), image_of)
        hits["i"].append(np.mean(i2c < 5))
        hits["c"].append(np.mean(c2i < 5))
    chance = chance_recall(image_of, (5,))
    assert 100 * np.mean(hits["i"]) == pytest.approx(chance["image2caption"]["r@5"], abs=1.5)
    assert 100 * np.mean(hits["c"]) == pytest.approx(chance["caption2image"]["r@5"], abs=1.5)
    assert chance["caption2image"]["r@5"] == 25.0


def test_recall_over_folds_averages_slices_of_images():
    from models.common.metrics import recall_metrics

    rng = np.random.default_rng(4)
    images = rng.normal(size=(10, 8))
    image_of = np.repeat(np.arange(10), 2)
    caps = images[image_of] + rng.normal(size=(20, 8))
    whole = recall_metrics(images, caps, image_of, folds=1)
    halves = [recall_metrics(images[p], caps[np.isin(image_of, p)], np.repeat(np.arange(5), 2))
              for p in (np.arange(5), np.arange(5, 10))]
    two = recall_metrics(images, caps, image_of, folds=2)
    assert two["image2speech"]["r@1"] == pytest.approx(np.mean([h["image2speech"]["r@1"] for h in halves]))
    assert two["folds"] == 2 and whole["folds"] == 1
    with pytest.raises(ValueError, match="folds"):
        recall_metrics(images, caps, image_of, folds=11)


def test_recall_at_k_counts_ranks_below_k_not_a_rank_of_exactly_k():
    from models.common.metrics import caption_recall

    # 3 images, one caption each; caption 0's image comes first, caption 1's second (0-based rank 1 = K for
    # K = 1), caption 2's third: R@1 = 1/3, R@2 = 2/3
    images = np.eye(3)
    speech = np.array([[1.0, 0.0, 0.0], [0.9, 0.8, 0.0], [0.9, 0.5, 0.1]])
    m = caption_recall({"image": images, "speech": speech}, np.arange(3), ks=(1, 2, 3))
    assert m["speech2image"]["r@1"] == pytest.approx(100 / 3) and m["speech2image"]["r@2"] == pytest.approx(200 / 3)
    assert m["speech2image"]["r@3"] == pytest.approx(100.0)
