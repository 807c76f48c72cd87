import json
import os

import numpy as np
import pytest

from pipeline.store import ClipResult, FeatureStore, StoreError, StoreWriter

BACKENDS = ["zarr", "hdf5"]


def _attrs(**kw):
    return {"key": "k1", "extractor": "test", "dims": [3], "dtype": "float32", "frame_rate": 100.0, **kw}


def _clips(rng, n, dims=(3,)):
    return [ClipResult(f"c{i}", f"key{i}", rng.normal(size=(i + 1, *dims)).astype("float32")) for i in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_roundtrip_ragged_csr(tmp_path, backend):
    rng = np.random.default_rng(0)
    w = StoreWriter(tmp_path / "s", _attrs(), backend)
    a, b = _clips(rng, 5)[:3], _clips(rng, 5)[3:]
    w.write_shard("s1", a)
    w.write_shard("s2", b + [ClipResult("bad", "kb", None, "no audio stream: none")])
    st = FeatureStore(tmp_path / "s")
    assert st.clip_ids == ["c0", "c1", "c2", "c3", "c4"]
    for r in a + b:
        np.testing.assert_array_equal(st[r.clip_id], r.array)
    assert st.failures == {"bad": "no audio stream: none"}
    assert list(st.offsets) == [0, 1, 3, 6, 10, 15]
    flat = st.to_dask().compute()
    np.testing.assert_array_equal(flat, np.concatenate([r.array for r in a + b]))
    assert st.attrs["extractor"] == "test" and st.attrs["backend"] == backend
    with pytest.raises(KeyError, match="it failed: no audio stream"):
        st["bad"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_uncommitted_shard_is_invisible_and_cleaned(tmp_path, backend):
    rng = np.random.default_rng(1)
    w = StoreWriter(tmp_path / "s", _attrs(), backend)
    w.write_shard("s1", _clips(rng, 2))
    # a writer killed after writing data but before its commit record
    w.write_shard("s2", [ClipResult("x", "kx", np.ones((2, 3), "float32"))])
    os.remove(tmp_path / "s" / "commits" / "s2.json")
    (tmp_path / "s" / "shards" / ".tmp-s3-dead.zarr").mkdir()
    st = FeatureStore(tmp_path / "s")
    assert st.clip_ids == ["c0", "c1"] and "x" not in st
    assert w.clean_temporaries() == 2  # the temporary, and s2's shard that no record names
    assert not list((tmp_path / "s" / "shards").glob(".tmp-*")) and not list((tmp_path / "s" / "shards").glob("s2*"))
    assert FeatureStore(tmp_path / "s").clip_ids == ["c0", "c1"]


def test_clip_keys_select_current_content(tmp_path):
    w = StoreWriter(tmp_path / "s", _attrs())
    w.write_shard("old", [ClipResult("a", "v1", np.zeros((1, 3), "float32"))])
    w.write_shard("new", [ClipResult("a", "v2", np.ones((1, 3), "float32"))])
    assert FeatureStore(tmp_path / "s", clip_keys={"a": "v1"})["a"].sum() == 0
    assert FeatureStore(tmp_path / "s", clip_keys={"a": "v2"})["a"].sum() == 3
    assert "a" not in FeatureStore(tmp_path / "s", clip_keys={"a": "v3"})


def test_shape_and_dtype_mismatch_refused(tmp_path):
    w = StoreWriter(tmp_path / "s", _attrs())
    with pytest.raises(StoreError, match="dims"):
        w.write_shard("s", [ClipResult("a", "k", np.zeros((2, 4), "float32"))])
    with pytest.raises(StoreError, match="dtype"):
        w.write_shard("s", [ClipResult("a", "k", np.zeros((2, 3), "float64"))])
    assert not list((tmp_path / "s" / "commits").glob("*.json"))


def test_store_refuses_other_key_and_missing_path(tmp_path):
    StoreWriter(tmp_path / "s", _attrs())
    with pytest.raises(StoreError, match="refusing to mix"):
        StoreWriter(tmp_path / "s", _attrs(key="other"))
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore(tmp_path / "nothing")


def test_scalar_rows_and_empty_shard(tmp_path):
    w = StoreWriter(tmp_path / "s", _attrs(dims=[]))
    w.write_shard("s1", [ClipResult("w", "k", np.arange(5, dtype="float32"))])
    w.write_shard("s2", [ClipResult("f", "k2", None, "zero duration: x")])
    st = FeatureStore(tmp_path / "s")
    np.testing.assert_array_equal(st["w"], np.arange(5))
    assert st.to_dask().shape == (5,)
    record = json.loads((tmp_path / "s" / "commits" / "s2.json").read_text())
    assert record["clips"] == [] and record["failed"][0]["reason"].startswith("zero duration")


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_means_read_each_shard_once_and_match_per_clip_means(tmp_path, backend):
    rng = np.random.default_rng(1)
    w = StoreWriter(tmp_path / "s", _attrs(dims=[2, 3]), backend)
    clips = _clips(rng, 6, dims=(2, 3))
    w.write_shard("s1", clips[:4])
    w.write_shard("s2", clips[4:] + [ClipResult("bad", "kb", None, "corrupt")])
    st = FeatureStore(tmp_path / "s")
    order = ["c5", "c0", "c3", "c4"]  # any order, across shards
    got = st.clip_means(order)
    want = np.stack([st[c].reshape(len(st[c]), -1).astype(np.float64).mean(axis=0) for c in order])
    assert got.dtype == np.float32 and got.shape == (4, 6)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(got[1], st["c0"].reshape(-1))  # one row: exactly itself
    with pytest.raises(KeyError, match="it failed: corrupt"):
        st.clip_means(["c0", "bad"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_write_leaves_no_commit_and_no_shard(tmp_path, backend, monkeypatch):
    import errno

    w = StoreWriter(tmp_path / "s", _attrs(), backend)
    w.write_shard("s1", _clips(np.random.default_rng(0), 2))
    real = type(w.backend).write

    def disk_full(self, path, data, offsets):
        real(self, path, data, offsets)  # the data lands, then the disk fills up (say, on the last chunk)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(type(w.backend), "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        w.write_shard("s2", _clips(np.random.default_rng(1), 3))
    assert sorted(p.name for p in (tmp_path / "s" / "commits").iterdir()) == ["s1.json"]
    assert sorted(p.name for p in (tmp_path / "s" / "shards").iterdir()) == [f"s1{w.backend.suffix}"]
    assert FeatureStore(tmp_path / "s").clip_ids == ["c0", "c1"]


def test_a_clip_with_no_rows_is_unusable_not_averaged(tmp_path):
    w = StoreWriter(tmp_path / "s", _attrs())
    w.write_shard("s1", [ClipResult("full", "k1", np.ones((2, 3), "float32")),
                         ClipResult("empty", "k2", np.zeros((0, 3), "float32"))])
    st = FeatureStore(tmp_path / "s")
    assert st.unusable("full") is None and "no rows" in st.unusable("empty") and st.unusable("x") == "not computed"
    with pytest.raises(StoreError, match="'empty' .* has no rows"):
        st.clip_means(["full", "empty"])


def test_commit_record_says_what_the_shard_holds(tmp_path):
    from pipeline.store import array_digest, scan_store

    w = StoreWriter(tmp_path / "s", _attrs())
    clips = _clips(np.random.default_rng(2), 3)
    rec = w.write_shard("s1", clips)
    data = np.concatenate([c.array for c in clips])
    assert rec["arrays"]["data"] == {"shape": [6, 3], "dtype": "<f4", "digest": array_digest(data)}
    assert rec["arrays"]["offsets"]["shape"] == [4] and "data/zarr.json" in rec["files"]
    assert all(size > 0 for size, _, _ in rec["files"].values())
    assert not scan_store(tmp_path / "s").is_damaged


def test_a_failed_commit_write_leaves_no_shard(tmp_path, monkeypatch):
    import errno

    from pipeline.store import writer as writer_mod

    w = StoreWriter(tmp_path / "s", _attrs())
    real = writer_mod._atomic_write_text

    def full(path, text):
        if path.parent.name == "commits":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(writer_mod, "_atomic_write_text", full)
    with pytest.raises(OSError):
        w.write_shard("s1", _clips(np.random.default_rng(0), 2))
    assert not list((tmp_path / "s" / "shards").iterdir()) and not list((tmp_path / "s" / "commits").iterdir())
