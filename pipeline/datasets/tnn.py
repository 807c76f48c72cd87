"""Pre-extracted features in the layouts the TNN-C-CCA code (ZenzenDatabase/CMR) reads.

`tnn_h5`:  one HDF5 file with audio_train, audio_test, visual_train, visual_test ([N, D] clip-level
           vectors) and lab_train, lab_test (integer class ids from 0, or one-hot rows).
`tnn_npy`: vegas.zip's per-video files: vgg/<id>.npy (uint8 [T, 128], VGGish), inception/<id>.npy
           (uint8 [T, 1024], Inception-V3 + PCA), one label per video, folds/ with 5 id lists.
`mv10k`:   MV-10K music videos, distributed as YouTube-8M-style features in the `tnn_npy` layout.

The manifests point `imported` stages at the arrays (media roles `audio_features` and
`visual_features`); no raw media is needed to train.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, Manifest

TNN_H5_KEYS = ("audio_train", "audio_test", "visual_train", "visual_test", "lab_train", "lab_test")


def label_ids(raw: np.ndarray, where: str) -> np.ndarray:
    """Integer class ids from a TNN label array: ids [N] or [N, 1], or one-hot rows [N, C]."""
    a = np.asarray(raw)
    if a.ndim == 2 and a.shape[1] > 1:
        if not (np.isin(a, (0, 1)).all() and (a.sum(axis=1) == 1).all()):
            raise ValueError(f"{where}: a [N, {a.shape[1]}] label array must be one-hot rows")
        return a.argmax(axis=1).astype(np.int64)
    a = a.reshape(-1)
    if a.size and (not np.issubdtype(a.dtype, np.number) or (a != np.round(a)).any() or a.min() < 0):
        raise ValueError(f"{where}: labels must be non-negative integer class ids")
    return a.astype(np.int64)


def _class_names(ids: np.ndarray, names: list[str] | None, where: str) -> list[str]:
    n = int(ids.max()) + 1 if ids.size else 0
    if names is None:
        return [str(i) for i in range(n)]
    if len(names) < n:
        raise ValueError(f"{where}: labels go up to {n - 1} but class_names has {len(names)} names")
    return list(names)


def _check_names(names: list[str] | None) -> None:
    if names is not None and len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class_names lists {dup} more than once; each class id needs its own name")


@dataclass
class TnnH5Config:
    file: str = "vegas_feature.h5"
    class_names: list[str] | None = None  # names for ids 0, 1, ...; default: the ids themselves

    def __post_init__(self) -> None:
        _check_names(self.class_names)


@register_dataset
class TnnH5Dataset(DatasetAdapter):
    """Clip-level features in TNN-C-CCA's vegas_feature.h5 (train/test split as in the file)."""

    name = "tnn_h5"
    kind = "features"
    Config = TnnH5Config
    published = "TNN-C-CCA (github.com/ZenzenDatabase/CMR): Data/vegas_feature.h5 from its Google Drive link"
    layout = ("ROOT/vegas_feature.h5 (param `file`) holding audio_train [N, 128], visual_train [N, 1024],\n"
              "lab_train [N] (ids from 0, or one-hot [N, C]) and the same three for _test")

    def manifest(self) -> Manifest:
        import h5py

        self.prepare()
        path = self.require(self.config.file, "feature")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise self.error(f"{path} is not a readable HDF5 file ({e})") from None
        with f:
            missing = [k for k in TNN_H5_KEYS if not isinstance(f.get(k), h5py.Dataset)]
            if missing:
                raise self.error(f"{path} lacks the dataset(s) {', '.join(missing)} (it has {', '.join(f)})")
            rows: list[tuple[str, int, int]] = []  # (split, row, class id)
            for split in ("train", "test"):
                a, v = f[f"audio_{split}"], f[f"visual_{split}"]
                try:
                    ids = label_ids(f[f"lab_{split}"][()], f"{path}: lab_{split}")
                except ValueError as e:
                    raise self.error(str(e)) from None
                if not (a.ndim == v.ndim == 2 and a.shape[0] == v.shape[0] == len(ids)):
                    raise self.error(f"{path}: audio_{split} {a.shape}, visual_{split} {v.shape} and "
                                     f"lab_{split} ({len(ids)} labels) must be [N, D] with the same N")
                rows += [(split, i, int(lab)) for i, lab in enumerate(ids)]
        try:
            classes = _class_names(np.array([r[2] for r in rows], dtype=np.int64), self.config.class_names, str(path))
        except ValueError as e:
            raise self.error(str(e)) from None
        width = {s: len(str(max(sum(r[0] == s for r in rows) - 1, 0))) for s in ("train", "test")}
        where = path.absolute()
        clips = [Clip(clip_id=f"{split}/{i:0{width[split]}d}", label=classes[lab], split=split,
                      media={"audio_features": where, "visual_features": where},
                      refs={"audio_features": f"audio_{split}[{i}]", "visual_features": f"visual_{split}[{i}]"})
                 for split, i, lab in rows]
        return Manifest(self.dataset_name, self.root, clips, classes)

    def feature_spec(self) -> dict[str, dict]:
        import h5py

        path = self.require(self.config.file, "feature")
        try:
            with h5py.File(path, "r") as f:
                return {v: {"dims": list(f[f"{v}_train"].shape[1:]), "dtype": str(f[f"{v}_train"].dtype)}
                        for v in ("audio", "visual")}
        except (OSError, KeyError) as e:
            raise self.error(f"{path}: cannot read audio_train / visual_train ({e})") from None


@dataclass
class TnnNpyConfig:
    audio_dir: str = "vgg"
    visual_dir: str = "inception"
    labels_dir: str | None = None  # default: the first of VEGAS_classes, classes, labels that exists
    folds_dir: str = "folds"
    class_names: list[str] | None = None
    skip_missing: bool = False

    def __post_init__(self) -> None:
        _check_names(self.class_names)


@register_dataset
class TnnNpyDataset(DatasetAdapter):
    """Per-video uint8 feature files of vegas.zip (vgg/, inception/, labels, folds/): 5 given folds."""

    name = "tnn_npy"
    kind = "features"
    Config = TnnNpyConfig
    published = "TNN-C-CCA (github.com/ZenzenDatabase/CMR): vegas.zip from its Google Drive link"
    layout = ("ROOT/vgg/<video id>.npy        uint8 [T, 128] audio (VGGish) per video\n"
              "ROOT/inception/<video id>.npy  uint8 [T, 1024] visual (Inception-V3) per video\n"
              "ROOT/VEGAS_classes/<video id>.npy  the class id (0-d array, or one-hot [C])\n"
              "ROOT/folds/<name>              5 files, one video id per line (folds in file-name order)\n"
              "uint8 values are dequantised as (x - 128) / 256 on import")

    def manifest(self) -> Manifest:
        self.prepare()
        cfg = self.config
        audio = self.require(cfg.audio_dir, "audio features", directory=True)
        visual = self.require(cfg.visual_dir, "visual features", directory=True)
        labels = (self.require(cfg.labels_dir, "labels", directory=True) if cfg.labels_dir
                  else self.find(["VEGAS_classes", "classes", "labels"], "labels folder", directory=True))
        folds_dir = self.require(cfg.folds_dir, "folds", directory=True)
        fold_files = sorted(p for p in folds_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not fold_files:
            raise self.error(f"{folds_dir} holds no fold files")
        fold_of: dict[str, int] = {}
        for k, ff in enumerate(fold_files):
            for vid in self.read_lines(ff):
                if vid in fold_of:
                    raise self.error(f"video '{vid}' is in both {fold_files[fold_of[vid]].name} and {ff.name}")
                fold_of[vid] = k
        clips = []
        for vid, k in fold_of.items():
            rel = f"{vid}.npy"
            clips.append(Clip(clip_id=vid, fold=k,
                              media={"audio_features": self.under(rel, f"fold id '{vid}'", audio).absolute(),
                                     "visual_features": self.under(rel, f"fold id '{vid}'", visual).absolute(),
                                     "label": self.under(rel, f"fold id '{vid}'", labels).absolute()}))
        clips = self.check_media(clips, cfg.skip_missing)
        ids = []
        for c in clips:
            try:
                raw = np.load(c.media["label"], allow_pickle=False)
                if not isinstance(raw, np.ndarray):
                    raise ValueError("an .npz archive, not one array")
                ids.append(int(label_ids(raw[None], str(c.media["label"]))[0]))
            except (ValueError, OSError, EOFError, KeyError) as e:
                raise self.error(f"label file {c.media['label']} is not a saved numpy class id "
                                 f"({type(e).__name__}: {e})") from None
        try:
            classes = _class_names(np.array(ids, dtype=np.int64), cfg.class_names, str(labels))
        except ValueError as e:
            raise self.error(str(e)) from None
        clips = [dataclasses.replace(c, label=classes[i], media={r: p for r, p in c.media.items() if r != "label"})
                 for c, i in zip(clips, ids)]
        return Manifest(self.dataset_name, self.root, clips, classes)

    def feature_spec(self) -> dict[str, dict]:
        """Dims and dtype of the first file of each view (by name); a file unlike it fails on import."""
        spec = {}
        for view, d in (("audio", self.config.audio_dir), ("visual", self.config.visual_dir)):
            folder = self.require(d, f"{view} features", directory=True)
            first = min(folder.glob("*.npy"), default=None)
            if first is None:
                raise self.error(f"{folder} holds no .npy files")
            try:
                x = np.load(first, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise self.error(f"{first} is not a saved numpy array ({e})") from None
            spec[view] = {"dims": list(x.shape[1:]) if x.ndim == 2 else list(x.shape), "dtype": str(x.dtype)}
        return spec


@register_dataset
class Mv10kDataset(TnnNpyDataset):
    """MV-10K music videos (YouTube-8M-style audio and visual features) in the per-video layout."""

    name = "mv10k"
    published = ("TNN-C-CCA (github.com/ZenzenDatabase/CMR) README: MV-10K features and 5 folds, Google Drive; "
                 "features in YouTube-8M format (research.google.com/youtube8m)")
    layout = TnnNpyDataset.layout
