"""`pipeline serve`'s nearest-neighbour index: exact search equals brute force (blocks, masks, ties), the vectors
file is made once per store content and memory-mapped, and faiss IVF answers above the exact limit."""
from __future__ import annotations

import logging

import numpy as np

import pipeline.serve.index as index_mod
from pipeline.serve.index import VectorIndex, normalize, top_k
from pipeline.training.run import write_rows_store


def _store(path, emb, ids=None):
    ids = ids or [f"item{i}" for i in range(len(emb))]
    write_rows_store(path, emb.astype(np.float32), ids, ids, {"key": "k", "stage": "s", "dataset": "d"}, "zarr", "all")
    return ids


def test_exact_search_is_brute_force_cosine_across_blocks_and_masks(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1000, 16)) * rng.uniform(0.1, 10, (1000, 1))  # unnormalised rows
    ids = _store(tmp_path / "emb", emb)
    monkeypatch.setattr(index_mod, "BLOCK", 128)  # 8 blocks: the merge across blocks is what is tested
    index = VectorIndex.from_store(tmp_path / "emb", tmp_path / "vectors")
    assert index.ids == sorted(ids) and isinstance(index.vectors, np.memmap)
    q = rng.standard_normal((3, 16))
    allowed = rng.random(1000) < 0.3
    got_i, got_s = index.search(q, 10, allowed)
    rows = np.array([ids.index(i) for i in index.ids])
    cos = normalize(q) @ normalize(emb[rows]).T
    for r in range(3):
        cand = np.flatnonzero(allowed)
        want = cand[np.argsort(-cos[r, cand], kind="stable")[:10]]
        assert list(got_i[r]) == list(want)
        np.testing.assert_allclose(got_s[r], cos[r, want], atol=1e-5)
    few = np.zeros(1000, bool)
    few[[5, 7]] = True
    i, s = index.search(q[0], 10, few)  # fewer allowed rows than k: only those
    assert sorted(i[0]) == [5, 7] and i.shape == (1, 2)


def test_ties_rank_the_lower_row_first():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]], np.float32)
    i, v = top_k(scores, 4)
    assert list(i[0]) == [1, 3, 0, 2] and list(v[0]) == [0.9, 0.9, 0.5, 0.5]


def test_the_vectors_file_is_made_once_per_store_content(tmp_path):
    rng = np.random.default_rng(1)
    _store(tmp_path / "emb", rng.standard_normal((50, 8)))
    VectorIndex.from_store(tmp_path / "emb", tmp_path / "vectors")
    files = list((tmp_path / "vectors").glob("*.npy"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    VectorIndex.from_store(tmp_path / "emb", tmp_path / "vectors")
    assert files[0].stat().st_mtime_ns == stamp  # reused
    new = rng.standard_normal((50, 8))
    _store(tmp_path / "emb", new)  # the store rewritten: other rows, another file, never the old rows
    index = VectorIndex.from_store(tmp_path / "emb", tmp_path / "vectors")
    assert len(list((tmp_path / "vectors").glob("*.npy"))) == 2
    np.testing.assert_allclose(index.vectors[index.ids.index("item3")], normalize(new[3]), atol=1e-6)
    assert not list((tmp_path / "vectors").glob("*.partial"))


def test_faiss_ivf_answers_above_the_exact_limit(tmp_path):
    import faiss  # noqa: F401  (the `ann` extra: .ci/setup installs it)
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((50, 32))
    emb = centres[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, 32))
    ids = _store(tmp_path / "emb", emb)
    exact = VectorIndex.from_store(tmp_path / "emb", tmp_path / "vectors")
    ivf = VectorIndex.from_store(tmp_path / "emb", tmp_path / "vectors", exact_limit=1000)
    assert exact.ann is None and ivf.ann is not None
    assert len(list((tmp_path / "vectors").glob("*.ivf"))) == 1  # built once, saved beside the vectors
    q = emb[:20] + 0.1 * rng.standard_normal((20, 32))
    allowed = np.arange(5000) % 2 == 0
    e_i, _ = exact.search(q, 10, allowed)
    a_i, a_s = ivf.search(q, 10, allowed)
    assert (a_i % 2 == 0).all()  # the mask holds in faiss too
    recall = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(e_i, a_i)])
    assert recall > 0.8, recall
    assert (np.diff(a_s, axis=1) <= 1e-6).all()
    assert len(ids) == 5000


def test_without_faiss_a_large_index_warns_and_searches_exactly(tmp_path, monkeypatch, caplog):
    import builtins

    real = builtins.__import__

    def no_faiss(name, *a, **k):
        if name == "faiss":
            raise ImportError("no faiss")
        return real(name, *a, **k)

    rng = np.random.default_rng(3)
    _store(tmp_path / "emb", rng.standard_normal((300, 8)))
    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with caplog.at_level(logging.WARNING):
        index = VectorIndex.from_store(tmp_path / "emb", tmp_path / "vectors", exact_limit=100)
    assert index.ann is None and "no faiss" in caplog.text
    assert index.search(rng.standard_normal(8), 5)[0].shape == (1, 5)
