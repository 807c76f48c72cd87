"""Pre-extracted TNN-C-CCA features: the h5 and per-video npy layouts, import into stores, tnn-h5 export."""
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.datasets import DatasetError
from pipeline.datasets.tnn import TnnH5Config, TnnH5Dataset, TnnNpyConfig, TnnNpyDataset
from pipeline.runner import PipelineError, run

from ..conftest import cli, write_config

IMPORT_STAGES = {
    "audio_features": {"group": "import", "implementation": "imported", "params": {"view": "audio"}},
    "visual_features": {"group": "import", "implementation": "imported", "params": {"view": "visual"}},
}


def make_tnn_h5(path: Path, n_train: int = 7, n_test: int = 5, seed: int = 0, **override) -> Path:
    """A miniature vegas_feature.h5: float32 features (8 audio, 12 visual dims), int64 ids 0..2."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data[f"audio_{split}"] = rng.standard_normal((n, 8)).astype(np.float32)
        data[f"visual_{split}"] = rng.standard_normal((n, 12)).astype(np.float32)
        data[f"lab_{split}"] = rng.integers(0, 3, n).astype(np.int64)
    data.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f.create_dataset(k, data=v)
    return path


def make_tnn_npy(root: Path, n: int = 10, n_folds: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """vegas.zip's layout: vgg/ (uint8 [T, 128]) + inception/ (uint8 [T, 1024]) + VEGAS_classes/ + folds/."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for d in ("vgg", "inception", "VEGAS_classes", "folds"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = [f"{cls}_video_{i:05d}" for i in range(n) for cls in ["dog"]]
    for i, vid in enumerate(ids):
        t = int(rng.integers(3, 7))
        arrays[f"vgg/{vid}"] = rng.integers(0, 256, (t, 128), dtype=np.uint8)
        arrays[f"inception/{vid}"] = rng.integers(0, 256, (t, 1024), dtype=np.uint8)
        np.save(root / "vgg" / f"{vid}.npy", arrays[f"vgg/{vid}"])
        np.save(root / "inception" / f"{vid}.npy", arrays[f"inception/{vid}"])
        np.save(root / "VEGAS_classes" / f"{vid}.npy", np.float32(i % 3))  # 0-d float, as the seed's files
    for k in range(n_folds):
        (root / "folds" / f"fold{k}.txt").write_text("".join(f"{v}\n" for v in ids[k::n_folds]))
    return arrays


def test_tnn_h5_manifest(tmp_path):
    make_tnn_h5(tmp_path / "vegas_feature.h5")
    m = TnnH5Dataset("f", tmp_path, TnnH5Config()).manifest()
    assert len(m) == 12 and m.classes == ["0", "1", "2"]
    assert [c.clip_id for c in m.clips][:2] == ["train/0", "train/1"] and m.clips[7].clip_id == "test/0"
    assert [c.split for c in m.clips] == ["train"] * 7 + ["test"] * 5
    with h5py.File(tmp_path / "vegas_feature.h5") as f:
        assert list(m.labels()) == list(f["lab_train"][()]) + list(f["lab_test"][()])
    assert m.clips[8].refs == {"audio_features": "audio_test[1]", "visual_features": "visual_test[1]"}


def test_tnn_h5_accepts_one_hot_labels_and_class_names(tmp_path):
    ids = np.array([0, 2, 1, 2])
    make_tnn_h5(tmp_path / "v.h5", n_train=4, n_test=1, lab_train=np.eye(3, dtype=np.float32)[ids],
                lab_test=np.array([[1.0]], dtype=np.float32))
    m = TnnH5Dataset("f", tmp_path, TnnH5Config(file="v.h5", class_names=["dog", "drum", "printer"])).manifest()
    assert [c.label for c in m.clips] == ["dog", "printer", "drum", "printer", "drum"]


@pytest.mark.parametrize("override, match", [
    ({"lab_test": None}, "lacks the dataset.s. lab_test"),
    ({"visual_train": np.zeros((6, 12), np.float32)}, "must be \\[N, D\\] with the same N"),
    ({"lab_train": np.array([0, 1, 2, 0.5, 1, 1, 1])}, "non-negative integer class ids"),
])
def test_tnn_h5_broken_layouts(tmp_path, override, match):
    make_tnn_h5(tmp_path / "vegas_feature.h5", **override)
    with pytest.raises(DatasetError, match=match):
        TnnH5Dataset("f", tmp_path, TnnH5Config()).manifest()


def test_tnn_h5_missing_or_corrupt_file(tmp_path):
    with pytest.raises(DatasetError, match="missing feature file .*vegas_feature.h5; expected layout"):
        TnnH5Dataset("f", tmp_path, TnnH5Config()).manifest()
    (tmp_path / "vegas_feature.h5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        TnnH5Dataset("f", tmp_path, TnnH5Config()).manifest()


@pytest.fixture
def h5_project(tmp_path):
    make_tnn_h5(tmp_path / "feats" / "vegas_feature.h5")
    return write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                        {"feats": {"adapter": "tnn_h5", "root": str(tmp_path / "feats")}}, IMPORT_STAGES)


def test_import_then_export_round_trips_exactly(tmp_path, h5_project):
    out = cli("run", "import", "--config", str(h5_project), "--no-progress").stdout
    assert "audio_features: computed 12 clips" in out
    cli("export", "--config", str(h5_project), "--stage", "audio_features", "--stage", "visual_features",
        "--format", "tnn-h5", str(tmp_path / "out.h5"))
    with h5py.File(tmp_path / "feats" / "vegas_feature.h5") as src, h5py.File(tmp_path / "out.h5") as dst:
        for key in src:
            a, b = src[key][()], dst[key][()]
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), key
    again = cli("export", "--config", str(h5_project), "--stage", "audio_features", "--stage", "visual_features",
                str(tmp_path / "out.h5"), check=False)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


def test_export_needs_one_audio_and_one_visual_stage(tmp_path, h5_project):
    run("import", config=h5_project, stage="audio_features")
    p = cli("export", "--config", str(h5_project), "--stage", "audio_features", str(tmp_path / "o.h5"), check=False)
    assert p.returncode == 2 and "add --stage for the visual one" in p.stderr
    p = cli("export", "--config", str(h5_project), "--stage", "audio_features", "--stage", "visual_features",
            str(tmp_path / "o.h5"), check=False)
    assert p.returncode == 2 and "holds 0 of 12 clips" in p.stderr and "pipeline run import" in p.stderr
    assert not (tmp_path / "o.h5").exists()


def test_media_stages_refuse_a_features_dataset(h5_project, tmp_path):
    cfg = write_config(tmp_path / "s2.yaml", tmp_path / "cache",
                       {"feats": {"adapter": "tnn_h5", "root": str(tmp_path / "feats")}},
                       {**IMPORT_STAGES, "audio": {"group": "extract", "implementation": "audio"}})
    with pytest.raises(PipelineError, match="holds features, and the stages of group 'extract' read media.*group 'import'"):
        run("extract", config=cfg)


def test_tnn_npy_manifest_folds_and_dequantised_import(tmp_path):
    arrays = make_tnn_npy(tmp_path / "vegas")
    m = TnnNpyDataset("v", tmp_path / "vegas", TnnNpyConfig()).manifest()
    assert len(m) == 10 and m.classes == ["0", "1", "2"]
    assert {c.clip_id: c.fold for c in m.clips}["dog_video_00007"] == 2
    assert m.by_id()["dog_video_00004"].label == "1"
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"v": {"adapter": "tnn_npy", "root": str(tmp_path / "vegas")}}, IMPORT_STAGES)
    from pipeline import open_store

    run("import", config=cfg)
    store = open_store(dataset="v", stage="visual_features", config=cfg)
    got = store["dog_video_00003"]
    raw = arrays["inception/dog_video_00003"]
    assert got.dtype == np.float32 and got.shape == raw.shape
    np.testing.assert_array_equal(got, (raw.astype(np.float32) - 128) / 256)
    out = tmp_path / "fold0.h5"
    cli("export", "--config", str(cfg), "--stage", "audio_features", "--stage", "visual_features",
        "--test-fold", "0", str(out))
    with h5py.File(out) as f:
        test_ids = [c.clip_id for c in m.clips if c.fold == 0]
        assert f["audio_test"].shape == (2, 128) and f["visual_train"].shape == (8, 1024)
        # the seed's clip vector: mean over frames, dequantised
        want = (np.mean(arrays[f"vgg/{test_ids[0]}"], axis=0) - 128.0) / 256.0
        np.testing.assert_allclose(f["audio_test"][0], want, rtol=0, atol=1e-6)
        assert list(f["lab_test"][()]) == [int(m.by_id()[i].label) for i in test_ids]


def test_tnn_npy_broken_layouts(tmp_path):
    root = tmp_path / "vegas"
    make_tnn_npy(root)
    (root / "inception" / "dog_video_00003.npy").unlink()
    with pytest.raises(DatasetError, match="1 media file.*missing:\n  .*inception/dog_video_00003.npy"):
        TnnNpyDataset("v", root, TnnNpyConfig()).manifest()
    assert len(TnnNpyDataset("v", root, TnnNpyConfig(skip_missing=True)).manifest()) == 9
    (root / "folds" / "fold1.txt").write_text("../../etc/passwd\n")
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        TnnNpyDataset("v", root, TnnNpyConfig(skip_missing=True)).manifest()
    (root / "folds" / "fold1.txt").write_text("dog_video_00000\n")
    with pytest.raises(DatasetError, match="'dog_video_00000' is in both fold0.txt and fold1.txt"):
        TnnNpyDataset("v", root, TnnNpyConfig()).manifest()
    for p in (root / "VEGAS_classes").iterdir():
        p.unlink()
    (root / "VEGAS_classes").rmdir()
    with pytest.raises(DatasetError, match="missing labels folder: looked for .*VEGAS_classes or .*classes"):
        TnnNpyDataset("v", root, TnnNpyConfig()).manifest()


def test_a_source_file_unlike_the_others_fails_alone_and_handles_are_released(tmp_path):
    root = tmp_path / "vegas"
    make_tnn_npy(root)
    np.save(root / "vgg" / "dog_video_00004.npy", np.zeros((3, 64), np.uint8))
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"v": {"adapter": "tnn_npy", "root": str(root)}}, IMPORT_STAGES)
    audio, visual = run("import", config=cfg)
    assert (audio.computed, audio.failed, visual.failed) == (9, 1, 0)
    assert audio.failures[0]["id"] == "dog_video_00004" and "[64], but this store's rows are [128]" in audio.failures[0]["reason"]
    h5 = tmp_path / "feats" / "vegas_feature.h5"
    make_tnn_h5(h5)
    cfg = write_config(tmp_path / "h5.yaml", tmp_path / "cache",
                       {"f": {"adapter": "tnn_h5", "root": str(h5.parent)}}, IMPORT_STAGES)
    run("import", config=cfg)
    with h5py.File(h5, "w"):  # truncating fails while any handle of the import is still open
        pass


def test_empty_split_exports_with_its_width(tmp_path):
    make_tnn_h5(tmp_path / "feats" / "vegas_feature.h5", n_test=0)
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"f": {"adapter": "tnn_h5", "root": str(tmp_path / "feats")}}, IMPORT_STAGES)
    run("import", config=cfg)
    cli("export", "--config", str(cfg), "--stage", "audio_features", "--stage", "visual_features", str(tmp_path / "o.h5"))
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["audio_test"].shape == (0, 8) and f["visual_test"].shape == (0, 12) and f["audio_test"].dtype == np.float32


def test_odd_sources_get_dataset_errors(tmp_path):
    make_tnn_h5(tmp_path / "vegas_feature.h5", audio_train=None)
    with h5py.File(tmp_path / "vegas_feature.h5", "a") as f:
        f.create_group("audio_train")
    with pytest.raises(DatasetError, match="lacks the dataset.s. audio_train"):
        TnnH5Dataset("f", tmp_path, TnnH5Config()).manifest()
    with pytest.raises(ValueError, match="lists \\['dog'\\] more than once"):
        TnnH5Config(class_names=["dog", "dog", "cat"])
    root = tmp_path / "vegas"
    make_tnn_npy(root)
    (root / "VEGAS_classes" / "dog_video_00002.npy").write_bytes(b"")
    with pytest.raises(DatasetError, match="dog_video_00002.npy is not a saved numpy class id"):
        TnnNpyDataset("v", root, TnnNpyConfig()).manifest()


def test_export_needs_class_labels(tmp_path):
    from .test_corpora import make_flickr8k_audio

    make_flickr8k_audio(tmp_path / "f8k")
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"f8k": {"adapter": "flickr8k_audio", "root": str(tmp_path / "f8k")}})
    p = cli("export", "--config", str(cfg), "--stage", "audio", "--stage", "logmel", str(tmp_path / "o.h5"), check=False)
    assert p.returncode == 2 and "has no class label for every clip" in p.stderr


def test_status_and_gc_with_media_and_features_datasets_in_one_config(tmp_path, tiny_synthetic_root):
    from ..conftest import TINY

    make_tnn_h5(tmp_path / "feats" / "vegas_feature.h5")
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY},
                        "feats": {"adapter": "tnn_h5", "root": str(tmp_path / "feats")}},
                       {**IMPORT_STAGES, "audio": {"group": "extract", "implementation": "audio"}})
    run("import", config=cfg, dataset="feats")
    media = cli("status", "--config", str(cfg)).stdout
    assert "audio  missing" in media and "audio_features" not in media
    feats = cli("status", "--config", str(cfg), "--dataset", "feats").stdout
    assert "audio_features   up to date" in feats and "audio " not in feats
    assert "would remove 0 store(s)" in cli("gc", "--dry-run", "--config", str(cfg)).stdout
    p = cli("export", "--config", str(cfg), "--stage", "visual_features", "--stage", "audio", str(tmp_path / "o.h5"),
            check=False)
    assert p.returncode == 2 and "stage 'visual_features' has no features for dataset 'tiny'" in p.stderr
