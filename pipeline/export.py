"""Export feature stores to other tools' formats; `tnn-h5` is the vegas_feature.h5 layout of TNN-C-CCA."""
from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .config import PipelineConfig
from .context import PipelineError, require_complete
from .locks import in_use
from .runner import resolve
from .store import FeatureStore

log = logging.getLogger(__name__)


def _split_of(clips: list[Any], test_fold: int | None) -> list[str | None]:
    if test_fold is not None:
        if any(c.fold is None for c in clips):
            raise PipelineError("this dataset has no folds; leave out --test-fold to use its train/test split")
        folds = sorted({c.fold for c in clips})
        if test_fold not in folds:
            raise PipelineError(f"--test-fold {test_fold} is not one of the dataset's folds {folds}")
        return ["test" if c.fold == test_fold else "train" for c in clips]
    if any(c.split is None for c in clips):
        raise PipelineError("this dataset has no published train/test split; pass --test-fold K to export "
                            "fold K as the test set and the other folds as training")
    return [c.split if c.split in ("train", "test") else None for c in clips]


def export_tnn_h5(config: PipelineConfig, dataset: str | None, stages: list[str], out: str | os.PathLike,
                  test_fold: int | None = None, force: bool = False) -> dict[str, int]:
    """Write one audio and one visual stage's clip vectors as vegas_feature.h5 (audio_train, ..., lab_test)."""
    import h5py

    out = Path(out)
    if out.exists() and not force:
        raise PipelineError(f"{out} exists; pass --force to replace it")
    ctx = resolve(config, dataset, only=stages)
    assert ctx.manifest is not None
    if not ctx.manifest.classes or any(c.label not in ctx.manifest.classes for c in ctx.manifest.clips):
        raise PipelineError(f"dataset '{ctx.dataset}' has no class label for every clip; tnn-h5's lab_train and "
                            "lab_test need one (caption corpora such as flickr8k_audio have none)")
    views: dict[str, tuple[str, Path]] = {}
    for name in stages:
        if name not in ctx.stages:
            raise PipelineError(f"stage '{name}' has no features for dataset '{ctx.dataset}': export reads extract "
                                "stages of a media dataset, or import stages of a features dataset")
        sk = ctx.stages[name]
        require_complete(ctx, name)
        modality = sk.attrs.get("modality")
        if modality not in ("audio", "visual"):
            raise PipelineError(f"stage '{name}' has modality {modality!r}; tnn-h5 takes one audio and one visual stage")
        if modality in views:
            raise PipelineError(f"stages '{views[modality][0]}' and '{name}' are both {modality}; pass one of each")
        views[modality] = (name, sk.store_path)
    lacking = [m for m in ("audio", "visual") if m not in views]
    if lacking:
        raise PipelineError(f"tnn-h5 needs an audio and a visual stage; add --stage for the {lacking[0]} one")

    clips = ctx.manifest.clips
    splits = _split_of(clips, test_fold)
    class_index = {c: i for i, c in enumerate(ctx.manifest.classes)}
    counts: dict[str, int] = {"train": 0, "test": 0, "failed": 0, "skipped": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}-{uuid.uuid4().hex[:8]}")
    with contextlib.ExitStack() as held:
        for _, path in views.values():
            held.enter_context(in_use(config.cache, path))
        stores = {m: FeatureStore(path, clip_keys=ctx.rows[name]) for m, (name, path) in views.items()}
        try:
            with h5py.File(tmp, "w") as f:
                for split in ("train", "test"):
                    rows = [c for c, s in zip(clips, splits) if s == split]
                    ok = [c for c in rows if all(c.clip_id in st for st in stores.values())]
                    counts["failed"] += len(rows) - len(ok)
                    counts[split] = len(ok)
                    for m, st in stores.items():
                        f.create_dataset(f"{m}_{split}", data=st.clip_means([c.clip_id for c in ok]))
                    f.create_dataset(f"lab_{split}", data=np.array([class_index[c.label] for c in ok], dtype=np.int64))
                f.attrs["classes"] = np.array(ctx.manifest.classes, dtype=h5py.string_dtype())
                f.attrs["audio_stage"], f.attrs["visual_stage"] = views["audio"][0], views["visual"][0]
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    counts["skipped"] = sum(s is None for s in splits)
    if counts["failed"]:
        log.warning("%d clip(s) failed in a stage and are left out of %s", counts["failed"], out)
    return counts


FORMATS = {"tnn-h5": export_tnn_h5}
