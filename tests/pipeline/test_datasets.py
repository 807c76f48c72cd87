import collections

import pytest

from pipeline.datasets import DatasetError, class_balanced_folds
from pipeline.datasets.folder import FolderConfig, FolderDataset
from pipeline.datasets.synthetic import SyntheticConfig, SyntheticDataset
from pipeline.media import probe

from ..conftest import TINY


def test_synthetic_writes_real_media_with_manifest(tiny_synthetic_root):
    m = SyntheticDataset("tiny", tiny_synthetic_root, SyntheticConfig(**TINY)).manifest()
    assert len(m) == 6 and m.classes == ["class00", "class01"]
    assert collections.Counter(c.label for c in m.clips) == {"class00": 3, "class01": 3}
    info = probe(m.clips[0].media["video"])
    assert info.has_video and info.has_audio and (info.width, info.height) == (32, 32)
    assert list(m.labels()) == [0, 0, 0, 1, 1, 1]
    assert sorted({c.fold for c in m.clips}) == [0, 1, 2]


def test_synthetic_refuses_other_params_in_same_root(tiny_synthetic_root):
    with pytest.raises(DatasetError, match="delete that folder or point `root` elsewhere"):
        SyntheticDataset("tiny", tiny_synthetic_root, SyntheticConfig(**{**TINY, "seed": 9})).prepare()


def test_synthetic_not_generated_yet_says_how(tmp_path):
    with pytest.raises(DatasetError, match="pipeline run extract --dataset x"):
        SyntheticDataset("x", tmp_path / "none", SyntheticConfig(**TINY)).manifest()


def test_class_balanced_folds_are_balanced_and_deterministic():
    ids = [f"c{i}" for i in range(53)]
    labels = [f"k{i % 4}" for i in range(53)]
    folds = class_balanced_folds(ids, labels, 5, seed=3)
    assert folds == class_balanced_folds(ids, labels, 5, seed=3)
    assert folds != class_balanced_folds(ids, labels, 5, seed=4)
    for k in range(4):
        counts = collections.Counter(f for f, lab in zip(folds, labels) if lab == f"k{k}")
        assert max(counts.values()) - min(counts.values()) <= 1
    sizes = collections.Counter(folds).values()
    assert max(sizes) - min(sizes) <= 1


def test_folder_adapter(tmp_path, clip_factory):
    for cls in ["dog", "baby crying"]:
        for i in range(3):
            clip_factory(tmp_path / cls / f"v{i}.mp4")
    (tmp_path / "dog" / "notes.txt").write_text("not media")
    m = FolderDataset("vegas", tmp_path, FolderConfig(n_folds=3)).manifest()
    assert m.classes == ["baby crying", "dog"]
    assert [c.clip_id for c in m.clips][:2] == ["baby crying/v0", "baby crying/v1"]
    assert all(c.media["video"].is_absolute() for c in m.clips)
    assert sorted(c.fold for c in m.clips if c.label == "dog") == [0, 1, 2]


def test_folder_adapter_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist; expected layout"):
        FolderDataset("v", tmp_path / "nope", FolderConfig()).manifest()
    with pytest.raises(DatasetError, match="no class subfolders"):
        FolderDataset("v", tmp_path, FolderConfig()).manifest()
