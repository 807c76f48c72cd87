"""Tasks: what the items of a train stage are and how they are scored. A task decides which items qualify
(and why the others are left out), cuts them into units (folds, or one split with a validation part for
model selection), saves each unit's held-out embeddings, names the final model, and evaluates: its
metrics, its one-line summary, its table and its plot.

- `classes`: labelled items (clips of classes); k-fold cross-validation on the dataset's folds, or its
  train/test split; MAP both ways, precision@K and PR curves (TNN-C-CCA's evaluation).
- `pairs`: items grouped by a shared item (spoken captions of one image); the published split, `val`
  selects the model after each epoch; Recall@K, medr, meanr both ways (VASE's evaluation).
- A `localization` task (per-item maps scored against annotations) registers here the same way.

A `Unit` refuses training items that are also held out, so no run can train on what it scores.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..cache import hash_key
from ..registry import register_task
from . import figures
from .base import TrainError, atomic_save

if TYPE_CHECKING:
    from models.items import Items

    from ..context import Context
    from ..datasets import Clip, Manifest

VAL_SPLITS = ("val", "dev", "valid", "validation")


@dataclass(frozen=True)
class Unit:
    """One round of a protocol: train on `train`, select the model on `val`, embed and score `test`
    (indices into the task's items). Training items are never held out: overlap is refused here."""

    name: str
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None
    val_is_test: bool = False  # a corpus with no test split (Places): the model is selected on what it is scored on

    def __post_init__(self) -> None:
        for other, what in ((self.test, "held out"), (self.val, "validation")):
            if other is not None and np.intersect1d(self.train, other).size:
                raise ValueError(f"unit '{self.name}': {np.intersect1d(self.train, other).size} item(s) would be "
                                 f"both trained on and {what}")
        if self.val is None:
            return
        if self.val_is_test:
            if not np.array_equal(np.sort(self.val), np.sort(self.test)):
                raise ValueError(f"unit '{self.name}': val_is_test, but its validation and test items differ")
        elif np.intersect1d(self.val, self.test).size:
            raise ValueError(f"unit '{self.name}': {np.intersect1d(self.val, self.test).size} item(s) would be both "
                             "validation and held out (pass val_is_test=True where the corpus has no test split)")


def _natural(s: str) -> tuple:
    return (0, int(s)) if s.lstrip("-").isdigit() else (1, s)


class Task:
    """Base class of tasks; see the module docstring."""

    name: ClassVar[str]
    digest_field: ClassVar[str]  # the run key's entry for what the task reads besides the features
    final: ClassVar[str]  # "refit": the final model trains on every item; "unit": it is the (one) unit's model
    plot_file: ClassVar[str]  # the picture `plot` writes into a run directory
    plot_label: ClassVar[str]

    def applies(self, manifest: "Manifest") -> str | None:
        """Why this task cannot be learned from the dataset, or None when it can."""
        raise NotImplementedError

    def digest(self, ctx: "Context") -> str:
        """Digest of what the task reads from the manifest (labels, folds, pairing, splits, text)."""
        raise NotImplementedError

    def qualifies(self, clip: "Clip") -> str | None:
        """Why a clip cannot be an item of this task, or None."""
        raise NotImplementedError

    def annotate(self, clips: list["Clip"], manifest: "Manifest") -> dict[str, Any]:
        """Item fields of `Items` the task defines (labels and classes, or groups)."""
        raise NotImplementedError

    def plan(self, items: "Items", params: dict[str, Any]) -> tuple[str, list[Unit], dict[str, Any]]:
        """The protocol used, its units, and what params.yaml should say about them."""
        raise NotImplementedError

    def unit_dir(self, run_dir: Path, unit: Unit) -> Path:
        raise NotImplementedError

    def committed(self, run_dir: Path, unit: Unit) -> bool:
        """Whether a unit's results are on disk (a resumed run skips it)."""
        raise NotImplementedError

    def save_unit(self, run_dir: Path, unit: Unit, trainer: Any, test: "Items", seconds: float) -> None:
        """Write a trained unit's model and held-out embeddings (atomically: a killed run never leaves half)."""
        raise NotImplementedError

    def embed_parts(self, items: "Items", units: list[Unit]) -> list[np.ndarray]:
        """Index sets whose embeddings fill the run's embedding stores (each embedded on its own)."""
        return [np.arange(len(items))]

    def write_stores(self, ctx: "Context", rk: Any, trainer: Any, items: "Items", units: list[Unit]) -> None:
        """Further stores of the final model the task scores (a localization task's AV tensors); none here."""

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        """The run's metrics from its saved units (also what an evaluate stage computes, with its params)."""
        raise NotImplementedError

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        """One picture of runs (name -> (run dir, metrics)); returns its path."""
        raise NotImplementedError

    def line(self, metrics: dict[str, Any]) -> str:
        """One run's metrics in one line."""
        raise NotImplementedError

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        """A plain-text table of runs' metrics."""
        raise NotImplementedError


@register_task
class Classes(Task):
    """Labelled items; folds or split; MAP, precision@K, PR curves, chance."""

    name = "classes"
    digest_field = "labels"
    final = "refit"
    plot_file, plot_label = "pr_curve.png", "PR curves"

    def applies(self, manifest: "Manifest") -> str | None:
        if not any(c.label is not None for c in manifest.clips):
            return "it trains on class-labelled clips; this dataset has no class labels"
        return None

    def digest(self, ctx: "Context") -> str:
        assert ctx.manifest is not None
        return hash_key([(c.clip_id, ctx.clip_keys[c.clip_id], c.label, c.fold, c.split) for c in ctx.manifest.clips])

    def qualifies(self, clip: "Clip") -> str | None:
        return "no class label" if clip.label is None else None

    def annotate(self, clips: list["Clip"], manifest: "Manifest") -> dict[str, Any]:
        classes = list(manifest.classes or sorted({c.label for c in clips}))
        index = {c: i for i, c in enumerate(classes)}
        return {"labels": np.array([index[c.label] for c in clips], dtype=np.int64), "classes": classes}

    def plan(self, items: "Items", params: dict[str, Any]) -> tuple[str, list[Unit], dict[str, Any]]:
        folds = [c.fold for c in items.media]
        splits = [c.split for c in items.media]
        has_folds = all(f is not None for f in folds) and len(set(folds)) >= 2
        has_split = "train" in splits and "test" in splits
        protocol = params.get("protocol", "auto")
        if protocol == "auto":
            protocol = "folds" if has_folds else "split" if has_split else ""
            if not protocol:
                raise TrainError("the dataset has neither folds (>= 2) nor a train/test split; give its adapter "
                                 "n_folds, or set the stage's protocol")
        if protocol == "folds":
            if not has_folds:
                raise TrainError("protocol 'folds' needs every clip in one of >= 2 folds; this dataset has none "
                                 "(use protocol: split)")
            f = np.asarray([str(x) for x in folds])
            masks = [(f"fold-{k}", f != k, f == k) for k in sorted(set(f), key=_natural)]
        else:
            if not has_split:
                raise TrainError("protocol 'split' needs clips in the 'train' and 'test' splits; this dataset has "
                                 "none (use protocol: folds)")
            s = np.asarray([str(x) for x in splits])
            masks = [("split", s == "train", s == "test")]
        assert items.labels is not None
        for name, train, test in masks:
            if len(np.unique(items.labels[train])) < 2 or test.sum() == 0:
                raise TrainError(f"{name}: needs training clips of >= 2 classes and some test clips; "
                                 f"has {int(train.sum())} training and {int(test.sum())} test clips")
        units = [Unit(name, np.flatnonzero(train), np.flatnonzero(test)) for name, train, test in masks]
        return protocol, units, {"protocol": protocol, "folds": [u.name for u in units],
                                 "clips": len(items), "classes": items.classes}

    def unit_dir(self, run_dir: Path, unit: Unit) -> Path:
        return run_dir / "folds" / unit.name

    def committed(self, run_dir: Path, unit: Unit) -> bool:
        return (self.unit_dir(run_dir, unit) / "embeddings.npz").exists()

    def save_unit(self, run_dir: Path, unit: Unit, trainer: Any, test: "Items", seconds: float) -> None:
        import torch

        emb = trainer.embed(test)
        final = self.unit_dir(run_dir, unit)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{unit.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        np.savez(tmp / "embeddings.npz", clip_ids=np.array(test.ids, dtype=str), labels=test.labels,
                 **{k: np.asarray(v, dtype=np.float32) for k, v in emb.items()})
        torch.save(trainer.state_dict(), tmp / "model.pt")
        (tmp / "history.json").write_text(json.dumps({"train_clips": len(unit.train), "test_clips": len(unit.test),
                                                      "seconds": seconds, **trainer.history}))
        if final.exists():
            shutil.rmtree(final)  # an uncommitted leftover (no embeddings.npz)
        os.replace(tmp, final)

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        from models.metrics import retrieval_metrics

        ks, points = tuple(params.get("ks", (1, 5, 10))), int(params.get("pr_points", 11))
        per_fold: dict[str, dict[str, Any]] = {}
        for fold in sorted((run_dir / "folds").iterdir(), key=lambda p: _natural(p.name.split("-", 1)[-1])):
            if fold.name.startswith(".") or not (fold / "embeddings.npz").exists():
                continue
            with np.load(fold / "embeddings.npz") as z:
                per_fold[fold.name] = retrieval_metrics(z["audio"], z["visual"], z["labels"], ks, points)
        if not per_fold:
            raise TrainError(f"{run_dir} has no committed folds; run its train stage")
        return {"folds": per_fold, **_summarise(per_fold)}

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        figures.plot_pr({name: m for name, (_, m) in runs.items()}, path / self.plot_file, title,
                        {name: d for name, (d, _) in runs.items()})
        return path / self.plot_file

    def line(self, metrics: dict[str, Any]) -> str:
        return figures.summary_line(metrics)

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        return figures.format_table(figures.table_rows(runs))


def _summarise(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over folds of every scalar metric, and the mean PR curve per direction."""
    # scalars every fold has (P@K exists only where a fold has >= K test clips)
    names = [k for k, v in next(iter(per_fold.values())).items()
             if isinstance(v, float) and all(k in m for m in per_fold.values())]
    out: dict[str, Any] = {}
    for k in names:
        vals = np.array([m[k] for m in per_fold.values()])
        out[k] = {"mean": float(vals.mean()), "std": float(vals.std()), "values": vals.tolist()}
    for d in figures.DIRECTIONS:
        curves = [m[f"pr_{d}"] for m in per_fold.values()]
        out[f"pr_{d}"] = {"recall": curves[0]["recall"],
                          "precision": np.mean([c["precision"] for c in curves], axis=0).tolist()}
    return out


def annotations_digest(ctx: "Context") -> dict[str, str]:
    """Split -> content digest of the dataset's annotation files (COCO instances: 160 MB, hashed once and memoized)."""
    from ..cache import DigestMemo
    from ..context import cache_paths

    assert ctx.manifest is not None
    memo = DigestMemo(cache_paths(ctx.config.cache)["digests"])
    return {s: memo.digest(p) for s, p in sorted(ctx.manifest.annotations.items())}


@register_task
class Pairs(Task):
    """Items grouped by a shared item (captions of an image); the published split; Recall@K both ways."""

    name = "pairs"
    digest_field = "pairs"
    final = "unit"
    plot_file, plot_label = "recall_curve.png", "Recall@K curves"

    def applies(self, manifest: "Manifest") -> str | None:
        if not any(c.group for c in manifest.clips):
            return "it trains on captions paired with images (clips grouped by image); this dataset has none"
        return None

    def digest(self, ctx: "Context") -> str:
        assert ctx.manifest is not None
        return hash_key([(c.clip_id, ctx.clip_keys[c.clip_id], c.group, c.split, list(c.text))
                         for c in ctx.manifest.clips])

    def qualifies(self, clip: "Clip") -> str | None:
        return "not paired with an image (no group)" if clip.group is None else None

    def annotate(self, clips: list["Clip"], manifest: "Manifest") -> dict[str, Any]:
        groups = list(dict.fromkeys(c.group for c in clips))
        index = {g: i for i, g in enumerate(groups)}
        return {"groups": groups, "group_of": np.array([index[c.group] for c in clips], dtype=np.int64)}

    def plan(self, items: "Items", params: dict[str, Any]) -> tuple[str, list[Unit], dict[str, Any]]:
        by_split: dict[str, list[int]] = {}
        for i, c in enumerate(items.media):
            by_split.setdefault(str(c.split).lower(), []).append(i)
        val_name = next((s for s in VAL_SPLITS if s in by_split), None)
        if "train" not in by_split or val_name is None:
            raise TrainError(f"a captions trainer needs a 'train' and a 'val' split (the dataset's published split); "
                             f"this dataset has {sorted(by_split)} among its usable captions")
        test_name = "test" if "test" in by_split else val_name  # no test split (Places): val, as the reference
        unit = Unit("split", np.array(by_split["train"]), np.array(by_split[test_name]), np.array(by_split[val_name]),
                    val_is_test=test_name == val_name)
        roles = {"train": unit.train, "val": unit.val, "test": unit.test}
        groups = {r: len({int(items.group_of[i]) for i in idx}) for r, idx in roles.items()}  # type: ignore[index]
        return "split", [unit], {"splits": {"train": "train", "val": val_name, "test": test_name},
                                 "captions": {r: len(idx) for r, idx in roles.items()}, "images": groups}

    def unit_dir(self, run_dir: Path, unit: Unit) -> Path:
        return run_dir

    def committed(self, run_dir: Path, unit: Unit) -> bool:
        return (run_dir / "test_embeddings.npz").exists() and (run_dir / "model.pt").exists()

    def save_unit(self, run_dir: Path, unit: Unit, trainer: Any, test: "Items", seconds: float) -> None:
        atomic_save(trainer.state_dict(), run_dir / "model.pt")
        if trainer.history.get("loss"):
            figures.plot_history(trainer.history, run_dir / "training_curve.png", f"{run_dir.name}")
        emb = trainer.embed(test)
        tmp = run_dir / f".tmp-test-{uuid.uuid4().hex[:8]}.npz"
        np.savez(tmp, clip_ids=np.array(test.ids, dtype=str), groups=np.array(test.groups, dtype=str),
                 image_of=test.group_of, **{k: np.asarray(v, dtype=np.float32) for k, v in emb.items()},
                 **self.extra_arrays(test))
        os.replace(tmp, run_dir / "test_embeddings.npz")  # last: marks the unit committed

    def extra_arrays(self, test: "Items") -> dict[str, np.ndarray]:
        """Arrays saved beside the test embeddings (none here)."""
        return {}

    def embed_parts(self, items: "Items", units: list[Unit]) -> list[np.ndarray]:
        u = units[0]
        parts = [u.train, u.val] if u.val is not None else [u.train]
        return parts + ([u.test] if not any(np.array_equal(u.test, p) for p in parts) else [])

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        from models.metrics import caption_recall

        ks = tuple(params.get("ks", (1, 5, 10)))
        folds = int(params.get("folds", params.get("eval_folds", 1)))
        with np.load(run_dir / "test_embeddings.npz") as z:
            emb = {k: z[k] for k in ("image", "speech", "text") if k in z}
            image_of = z["image_of"]
        try:
            out = caption_recall(emb, image_of, ks, folds)
            if folds > 1:  # COCO's two protocols: 1k (5 folds of 1000 images, averaged) and the whole 5k
                whole = caption_recall(emb, image_of, ks, 1)
                out["whole"] = {k: whole[k] for k in (*figures.directions(whole), "rsum", "n_images")}
        except ValueError as e:
            raise TrainError(f"{run_dir}: {e}") from None
        if params.get("sampled_recall"):  # the VGS reference's Recall@10: 100 draws of 1000 pairs, with replacement
            from models.metrics import sampled_recall_at_10

            pairs = (emb["speech"], emb["image"][image_of])
            out["sampled_r@10"] = {"speech2image": sampled_recall_at_10(*pairs),
                                   "image2speech": sampled_recall_at_10(*pairs[::-1])}
        return out

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        figures.plot_recall({name: d for name, (d, _) in runs.items()}, path / self.plot_file, title)
        return path / self.plot_file

    def line(self, metrics: dict[str, Any]) -> str:
        return figures.recall_line(metrics)

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        return figures.recall_table(runs)



@register_task
class Modalities(Pairs):
    """Items with up to three modalities (an image per group, a sound and a text per item), the published split;
    retrieval between every two of them (See, Hear, and Read): R@K and median rank per query x target modality."""

    name = "modalities"
    plot_file, plot_label = "modality_matrix.png", "median rank, query x target modality"

    def extra_arrays(self, test: "Items") -> dict[str, np.ndarray]:
        """Which items have each optional modality (a mixed corpus: captions without sound, videos without text)."""
        return {f"present_{k}": v for k, v in test.present.items()}

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        from models.metrics import MODALITIES, modality_matrix

        ks = tuple(params.get("ks", (1, 5, 10)))
        folds = int(params.get("folds", params.get("eval_folds", 1)))
        with np.load(run_dir / "test_embeddings.npz") as z:
            emb = {k: z[k] for k in MODALITIES if k in z}
            image_of = z["image_of"]
            present = {k: z[f"present_{k}"] for k in MODALITIES if f"present_{k}" in z}
        try:
            out = modality_matrix(emb, image_of, ks, folds, present)
        except ValueError as e:
            raise TrainError(f"{run_dir}: {e}") from None
        trained = [d for d in ("image2text", "text2image", "image2sound", "sound2image") if d in out["matrix"]]
        out["rsum"] = float(sum(out["matrix"][d][f"r@{k}"] for d in trained for k in ks))
        out["chance_rsum"] = float(sum(out["chance"][d][f"r@{k}"] for d in trained for k in ks))
        return out

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        figures.plot_modality_matrix({name: m for name, (_, m) in runs.items()}, path / self.plot_file, title)
        return path / self.plot_file

    def line(self, metrics: dict[str, Any]) -> str:
        return figures.matrix_line(metrics)

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        return figures.matrix_table(runs)
