"""Train and evaluate stages: cross-validated trainers over feature stores, and run directories.

A train stage reads one audio and one visual upstream store (the ones of its `upstream` that apply
to the dataset: extract stages on media datasets, import stages on feature datasets), takes each
clip's mean vector, and runs the protocol: `folds` trains on all folds but one and embeds the held-
out fold, for every fold (class-balanced k-fold CV); `split` trains on the `train` split and embeds
`test`. Each fold is committed on its own (a killed run resumes at the next fold). Then a final
model (all clips for `folds`, the train split for `split`) embeds every clip into two stores
(`embeddings/audio`, `embeddings/visual`), and the run is evaluated.

Run directory: cache/runs/<dataset>/<stage>-<key>/ with params.yaml, folds/<k>/{model.pt,
embeddings.npz, metrics.json, history.json}, model.pt, embeddings/, metrics.json (mean +- std over
folds and the per-fold values, written last: its presence marks the run complete) and
pr_curve.png. The key hashes the trainer, its VERSION and params, the upstream store keys and the
clips' labels/folds/splits, so changing e.g. a triplet margin trains anew on the cached features.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from .cache import hash_key
from .captions import pairs_digest, task_of
from .config import implementation, key_params
from .registry import EVALUATORS, TRAINERS
from .store import ClipResult, FeatureStore, StoreWriter, _atomic_write_text

log = logging.getLogger(__name__)

DIRECTIONS = ("audio2visual", "visual2audio")


class TrainError(RuntimeError):
    """A train or evaluate stage cannot run; the message says what to do."""


@dataclass
class RunKeys:
    """What identifies one train/evaluate stage's run for one dataset."""

    name: str
    implementation: str
    kind: str  # "train" or "evaluate"
    params: dict[str, Any]
    key: str
    run_dir: Path
    views: dict[str, str] = field(default_factory=dict)  # modality -> upstream feature stage (train)
    upstream_runs: list[str] = field(default_factory=list)  # train stages an evaluate stage reads
    init_from: str | None = None  # a train stage whose model this one starts from (fine-tuning)


@dataclass
class RunReport:
    """What a train/evaluate stage did: reused or trained, its metrics, where the run lives."""

    name: str
    kind: str
    run_dir: Path
    reused: bool
    folds_trained: int = 0
    folds_reused: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def is_run_stage(impl: Any) -> bool:
    """True for trainers and evaluators (stages that write a run directory, not a feature store)."""
    name = getattr(impl, "name", None)
    return any(name in reg and reg.get(name) is impl for reg in (TRAINERS, EVALUATORS))


def _labels_digest(ctx: Any) -> str:
    assert ctx.manifest is not None
    return hash_key([(c.clip_id, ctx.clip_keys[c.clip_id], c.label, c.fold, c.split) for c in ctx.manifest.clips])


def resolve_runs(ctx: Any, names: list[str]) -> dict[str, RunKeys]:
    """Keys and run directories of the train/evaluate stages among `names` (feature stages resolved in ctx)."""
    cfg = ctx.config
    runs: dict[str, RunKeys] = {}
    root = cfg.cache / "runs" / ctx.dataset
    for name in cfg.order(names):
        spec = cfg.stages[name]
        impl = implementation(spec.implementation)
        if not is_run_stage(impl):
            continue
        params = cfg.params_for(name, ctx.dataset)
        if impl.name in TRAINERS:
            views: dict[str, str] = {}
            for u in spec.upstream:
                if u not in ctx.stages:
                    continue  # an upstream that does not apply to this dataset (import vs extract)
                modality = ctx.stages[u].attrs.get("modality")
                if modality in views:
                    raise TrainError(f"stage '{name}': upstream stages '{views[modality]}' and '{u}' are both "
                                     f"{modality} for dataset '{ctx.dataset}'; a trainer reads one audio and one visual")
                if modality in ("audio", "visual"):
                    views[modality] = u
            lacking = [m for m in ("audio", "visual") if m not in views]
            if lacking:
                raise TrainError(f"stage '{name}' has no {lacking[0]} upstream stage that applies to dataset "
                                 f"'{ctx.dataset}' (its upstream: {', '.join(spec.upstream) or 'none'}); add an "
                                 f"extract (media datasets) or import (feature datasets) stage of that modality")
            ident = {"implementation": spec.implementation, "version": impl.VERSION,
                     "params": key_params(impl.Config, params),
                     "views": {m: ctx.stages[s].store_key for m, s in sorted(views.items())}}
            inits = [u for u in spec.upstream if u in runs and runs[u].kind == "train"]
            if len(inits) > 1:
                raise TrainError(f"stage '{name}' lists train stages {', '.join(inits)} upstream; it can start "
                                 "from one model only")
            if task_of(impl) == "captions":
                ident["pairs"] = pairs_digest(ctx)
                if inits:
                    ident["init"] = runs[inits[0]].key
            else:
                if inits:
                    raise TrainError(f"stage '{name}' ({spec.implementation}) cannot start from another run "
                                     f"('{inits[0]}'); only captions trainers fine-tune")
                ident["labels"] = _labels_digest(ctx)
            key = hash_key(ident)
            runs[name] = RunKeys(name, spec.implementation, "train", params, key, root / f"{name}-{key}", views,
                                 init_from=inits[0] if inits else None)
        else:
            ups = [u for u in spec.upstream if u in runs and runs[u].kind == "train"]
            if not ups:
                raise TrainError(f"stage '{name}' evaluates train stages; list them under its upstream "
                                 f"(its upstream: {', '.join(spec.upstream) or 'none'})")
            key = hash_key({"implementation": spec.implementation, "version": impl.VERSION, "params": params,
                            "runs": [runs[u].key for u in ups]})
            runs[name] = RunKeys(name, spec.implementation, "evaluate", params, key, root / f"{name}-{key}",
                                 upstream_runs=ups)
    return runs


def _atomic_json(path: Path, obj: Any) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2))


def _params_yaml(ctx: Any, rk: RunKeys, extra: dict[str, Any]) -> str:
    info = {"stage": rk.name, "implementation": rk.implementation, "kind": rk.kind,
            "version": implementation(rk.implementation).VERSION, "key": rk.key, "dataset": ctx.dataset,
            "params": rk.params, **extra}
    return yaml.safe_dump(info, sort_keys=False)


@contextlib.contextmanager
def _run_lock(ctx: Any, rk: RunKeys, on_wait: Callable[[str], None] | None) -> Iterator[None]:
    from filelock import FileLock

    from .runner import _acquire

    if (rk.run_dir / "metrics.json").exists():  # a complete run is never written again: no lock to read it
        yield
        return
    path = ctx.config.cache / "locks" / "runs" / ctx.dataset / f"{rk.run_dir.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    _acquire(lock, f"stage '{rk.name}'", on_wait)
    try:
        yield
    finally:
        lock.release()


@dataclass
class Views:
    """The clips a trainer sees: ids, clip-mean vectors of both views, class index per clip."""

    clip_ids: list[str]
    audio: np.ndarray
    visual: np.ndarray
    labels: np.ndarray
    folds: list[Any]
    splits: list[Any]
    classes: list[str]
    skipped: dict[str, str]


def unusable(stores: dict[str, FeatureStore], stages: dict[str, str], clip_id: str) -> str | None:
    """Why a clip cannot be a training item (failed or empty in one of the view stores), or None."""
    for modality, st in stores.items():
        why = st.unusable(clip_id)
        if why:
            return f"stage '{stages[modality]}': {why}"
    return None


def load_views(ctx: Any, rk: RunKeys) -> Views:
    """Clip means of the audio and visual upstream stores for every labelled clip both hold."""
    from .runner import require_complete

    assert ctx.manifest is not None
    clips = ctx.manifest.clips
    for stage in rk.views.values():
        require_complete(ctx, stage)
    stores = {m: FeatureStore(ctx.stages[s].store_path, clip_keys=ctx.clip_keys) for m, s in rk.views.items()}
    skipped: dict[str, str] = {}
    keep = []
    for c in clips:
        if c.label is None:
            skipped[c.clip_id] = "no class label"
            continue
        why = unusable(stores, rk.views, c.clip_id)
        if why:
            skipped[c.clip_id] = why
            continue
        keep.append(c)
    if skipped:
        log.warning("stage '%s': %d clip(s) left out (no label, failed upstream, or no rows), e.g. %s: %s",
                    rk.name, len(skipped), *next(iter(skipped.items())))
    classes = list(ctx.manifest.classes or sorted({c.label for c in keep}))
    index = {c: i for i, c in enumerate(classes)}
    ids = [c.clip_id for c in keep]
    return Views(ids, stores["audio"].clip_means(ids).astype(np.float64),
                 stores["visual"].clip_means(ids).astype(np.float64),
                 np.array([index[c.label] for c in keep], dtype=np.int64),
                 [c.fold for c in keep], [c.split for c in keep], classes, skipped)


def plan_folds(views: Views, protocol: str) -> tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The protocol actually used, and per fold (name, train mask, test mask)."""
    has_folds = all(f is not None for f in views.folds) and len(set(views.folds)) >= 2
    has_split = "train" in views.splits and "test" in views.splits
    if protocol == "auto":
        protocol = "folds" if has_folds else "split" if has_split else ""
        if not protocol:
            raise TrainError("the dataset has neither folds (>= 2) nor a train/test split; give its adapter "
                             "n_folds, or set the stage's protocol")
    if protocol == "folds":
        if not has_folds:
            raise TrainError("protocol 'folds' needs every clip in one of >= 2 folds; this dataset has none "
                             "(use protocol: split)")
        folds = np.asarray([str(f) for f in views.folds])
        plan = [(f"fold-{f}", folds != f, folds == f) for f in sorted(set(folds), key=_natural)]
    else:
        if not has_split:
            raise TrainError("protocol 'split' needs clips in the 'train' and 'test' splits; this dataset has "
                             "none (use protocol: folds)")
        splits = np.asarray([str(s) for s in views.splits])
        plan = [("split", splits == "train", splits == "test")]
    for fname, train, test in plan:
        if len(np.unique(views.labels[train])) < 2 or test.sum() == 0:
            raise TrainError(f"{fname}: needs training clips of >= 2 classes and some test clips; "
                             f"has {int(train.sum())} training and {int(test.sum())} test clips")
    return protocol, plan


def _natural(s: str) -> tuple:
    return (0, int(s)) if s.lstrip("-").isdigit() else (1, s)


def _save_model(trainer: Any, path: Path) -> None:
    import torch

    torch.save(trainer.state_dict(), path)


def load_trainer(run_dir: str | os.PathLike, fold: str | None = None, device: str = "cpu") -> Any:
    """A fitted trainer from a run directory (the final model, or one fold's)."""
    import torch

    run_dir = Path(run_dir)
    info = yaml.safe_load((run_dir / "params.yaml").read_text())
    impl = TRAINERS.get(info["implementation"])
    path = run_dir / ("model.pt" if fold is None else f"folds/{fold}/model.pt")
    cfg = impl.Config(**info["params"])
    if getattr(cfg, "finetune_cnn", False):  # the model holds a CNN: rebuild its architecture (weights come from model.pt)
        from .captions import stage_cnn

        ft = info["finetune_cnn"]
        cnn, _ = stage_cnn(ft["stage"], ft["implementation"], {**ft["params"], "weights": "random:0"}, ft["crop_size"])
        trainer = impl(cfg, device, cnn=cnn)
    else:
        trainer = impl(cfg, device)
    return trainer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _fit(impl: Any, rk: RunKeys, device: str, views: Views, mask: np.ndarray, what: str) -> Any:
    trainer = impl(impl.Config(**rk.params), device)
    try:
        return trainer.fit(views.audio[mask], views.visual[mask], views.labels[mask])
    except ValueError as e:  # e.g. too few clips for n_components, a singular covariance
        raise TrainError(f"{what} ({int(mask.sum())} training clips): {e}") from None


def summarise(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over folds of every scalar metric, and the mean PR curve per direction."""
    # scalars every fold has (P@K exists only where a fold has >= K test clips)
    names = [k for k, v in next(iter(per_fold.values())).items()
             if isinstance(v, float) and all(k in m for m in per_fold.values())]
    out: dict[str, Any] = {}
    for k in names:
        vals = np.array([m[k] for m in per_fold.values()])
        out[k] = {"mean": float(vals.mean()), "std": float(vals.std()), "values": vals.tolist()}
    for d in DIRECTIONS:
        curves = [m[f"pr_{d}"] for m in per_fold.values()]
        out[f"pr_{d}"] = {"recall": curves[0]["recall"],
                          "precision": np.mean([c["precision"] for c in curves], axis=0).tolist()}
    return out


def evaluate_folds(run_dir: Path, ks: tuple[int, ...] = (1, 5, 10), points: int = 11) -> dict[str, Any]:
    """Retrieval metrics of every committed fold's held-out embeddings in a train run directory."""
    from models.metrics import retrieval_metrics

    per_fold: dict[str, dict[str, Any]] = {}
    for fold in sorted((run_dir / "folds").iterdir(), key=lambda p: _natural(p.name.split("-", 1)[-1])):
        if fold.name.startswith(".") or not (fold / "embeddings.npz").exists():
            continue
        with np.load(fold / "embeddings.npz") as z:
            per_fold[fold.name] = retrieval_metrics(z["audio"], z["visual"], z["labels"], ks, points)
    if not per_fold:
        raise TrainError(f"{run_dir} has no committed folds; run its train stage")
    return {"folds": per_fold, **summarise(per_fold)}


def save_figure(fig: Any, path: Path, title: str, dpi: int = 110) -> None:
    """Title, lay out and write a matplotlib figure as PNG, atomically (temporary name, then rename)."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def plot_pr(curves: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """One PR-curve PNG: a line per (name, direction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, d in zip(axes, DIRECTIONS):
        for name, m in curves.items():
            ax.plot(m[f"pr_{d}"]["recall"], m[f"pr_{d}"]["precision"], marker="o", ms=3,
                    label=f"{name} (MAP {m[f'map_{d}']['mean']:.3f})")
        ax.set_title(d.replace("2", " -> "))
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("interpolated precision")
    save_figure(fig, path, title)


def write_embedding_store(ctx: Any, rk: RunKeys, modality: str, clip_ids: list[str], emb: np.ndarray,
                          model_on: str, row: str = "clip") -> None:
    """A run's embeddings of one modality as a store under run_dir/embeddings/ (one row per clip, replaced whole)."""
    path = rk.run_dir / "embeddings" / modality
    if path.exists():
        shutil.rmtree(path)
    attrs = {"key": rk.key, "stage": rk.name, "dataset": ctx.dataset, "extractor": rk.implementation,
             "kind": "embedding", "modality": modality, "dims": [int(emb.shape[1])], "dtype": "float32",
             "frame_rate": None, "params": rk.params, "model": model_on,
             "how_to_read": f"one row per {row}: pipeline.open_store(path)[clip_id][0]"}
    StoreWriter(path, attrs, ctx.config.backend).write_shard(hash_key([rk.key, modality]), [
        ClipResult(cid, ctx.clip_keys[cid], emb[i:i + 1].astype(np.float32), None) for i, cid in enumerate(clip_ids)])


def _write_embeddings(ctx: Any, rk: RunKeys, views: Views, trainer: Any, model_on: str) -> None:
    a, v = trainer.transform(views.audio, views.visual)
    for modality, emb in (("audio", a), ("visual", v)):
        write_embedding_store(ctx, rk, modality, views.clip_ids, emb, model_on)


def run_train(ctx: Any, rk: RunKeys, device: str = "auto", on_wait: Callable[[str], None] | None = None,
              on_fold: Callable[[str, float], None] | None = None) -> RunReport:
    """Cross-validate, fit the final model, write embeddings and metrics; reuse what is committed."""
    from .runner import in_use

    t0 = time.perf_counter()
    impl = TRAINERS.get(rk.implementation)
    with _run_lock(ctx, rk, on_wait), contextlib.ExitStack() as held:
        if (rk.run_dir / "metrics.json").exists():
            metrics = json.loads((rk.run_dir / "metrics.json").read_text())
            return RunReport(rk.name, "train", rk.run_dir, True, folds_reused=len(metrics["folds"]),
                             metrics=metrics, seconds=time.perf_counter() - t0)
        for stage in rk.views.values():
            held.enter_context(in_use(ctx.config.cache, ctx.stages[stage].store_path))
        views = load_views(ctx, rk)
        protocol, plan = plan_folds(views, rk.params.get("protocol", "auto"))
        folds_dir = rk.run_dir / "folds"
        folds_dir.mkdir(parents=True, exist_ok=True)
        (rk.run_dir / "params.yaml").write_text(_params_yaml(ctx, rk, {
            "protocol": protocol, "folds": [f for f, _, _ in plan],
            "upstream": {m: {"stage": s, "implementation": ctx.stages[s].implementation,
                             "store": str(ctx.stages[s].store_path),
                             "random_weights": bool(ctx.stages[s].attrs.get("random_weights"))}
                         for m, s in rk.views.items()},
            "clips": len(views.clip_ids), "classes": views.classes, "left_out": len(views.skipped),
            "device": device}))
        report = RunReport(rk.name, "train", rk.run_dir, False)
        fitted: dict[str, Any] = {}
        for fname, train, test in plan:
            final = folds_dir / fname
            if (final / "embeddings.npz").exists():
                report.folds_reused += 1
                continue
            tf = time.perf_counter()
            trainer = _fit(impl, rk, device, views, train, fname)
            a, v = trainer.transform(views.audio[test], views.visual[test])
            tmp = folds_dir / f".tmp-{fname}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            ids = np.array(views.clip_ids, dtype=object)[test]
            np.savez(tmp / "embeddings.npz", clip_ids=ids.astype(str), labels=views.labels[test],
                     audio=a.astype(np.float32), visual=v.astype(np.float32))
            _save_model(trainer, tmp / "model.pt")
            (tmp / "history.json").write_text(json.dumps({"train_clips": int(train.sum()),
                                                          "test_clips": int(test.sum()),
                                                          "seconds": time.perf_counter() - tf, **trainer.history}))
            if final.exists():
                shutil.rmtree(final)  # an uncommitted leftover (no embeddings.npz)
            os.replace(tmp, final)
            fitted[fname] = trainer
            report.folds_trained += 1
            if on_fold:
                on_fold(fname, time.perf_counter() - tf)
        for leftover in folds_dir.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if protocol == "split":
            trainer = fitted.get("split") or load_trainer(rk.run_dir, "split", device)
            shutil.copyfile(folds_dir / "split" / "model.pt", rk.run_dir / "model.pt")
            model_on = "the train split"
        else:
            trainer = _fit(impl, rk, device, views, np.ones(len(views.clip_ids), dtype=bool), "final model")
            _save_model(trainer, rk.run_dir / "model.pt")
            model_on = "all clips (after cross-validation)"
        _write_embeddings(ctx, rk, views, trainer, model_on)
        metrics = evaluate_folds(rk.run_dir)
        for fname, m in metrics["folds"].items():
            _atomic_json(folds_dir / fname / "metrics.json", m)
        metrics.update({"stage": rk.name, "implementation": rk.implementation, "protocol": protocol,
                        "dataset": ctx.dataset, "key": rk.key, "completed": time.time()})
        plot_pr({rk.name: metrics}, rk.run_dir / "pr_curve.png", f"{rk.name} on {ctx.dataset} ({protocol})")
        _atomic_json(rk.run_dir / "metrics.json", metrics)  # last: marks the run complete
        report.metrics = metrics
    report.seconds = time.perf_counter() - t0
    return report


def run_evaluate(ctx: Any, rk: RunKeys, runs: dict[str, RunKeys],
                 on_wait: Callable[[str], None] | None = None) -> RunReport:
    """Recompute retrieval metrics of the upstream train runs with this stage's params; one table, one plot."""
    t0 = time.perf_counter()
    with _run_lock(ctx, rk, on_wait):
        if (rk.run_dir / "metrics.json").exists():
            metrics = json.loads((rk.run_dir / "metrics.json").read_text())
            return RunReport(rk.name, "evaluate", rk.run_dir, True, metrics=metrics,
                             seconds=time.perf_counter() - t0)
        rk.run_dir.mkdir(parents=True, exist_ok=True)
        ks = tuple(rk.params.get("ks", (1, 5, 10)))
        captions = task_of(EVALUATORS.get(rk.implementation)) == "captions"
        rows: dict[str, Any] = {}
        for name in rk.upstream_runs:
            up = runs[name]
            if not (up.run_dir / "metrics.json").exists():
                raise TrainError(f"train stage '{name}' has not completed ({up.run_dir}); "
                                 f"run `pipeline run train --dataset {ctx.dataset} --stage {name}`")
            done = json.loads((up.run_dir / "metrics.json").read_text())
            if captions != (done.get("task") == "captions"):
                raise TrainError(f"evaluate stage '{rk.name}' ({rk.implementation}) cannot read train stage '{name}' "
                                 f"({up.implementation}): use 'recall' for captions trainers, 'retrieval' for the others")
            if captions:
                m = caption_recall_of_run(up.run_dir, ks, rk.params.get("folds", 1))
                m["evaluated_on"] = done["evaluated_on"]
            else:
                m = evaluate_folds(up.run_dir, ks, rk.params.get("pr_points", 11))
                m["protocol"] = done["protocol"]
            m.update({"run": str(up.run_dir), "implementation": up.implementation})
            rows[name] = m
        (rk.run_dir / "params.yaml").write_text(_params_yaml(ctx, rk, {
            "runs": {n: str(runs[n].run_dir) for n in rk.upstream_runs}}))
        if captions:
            plot_recall(rk.upstream_runs, runs, rk.run_dir / "recall_curve.png", f"{', '.join(rows)} on {ctx.dataset}")
        else:
            plot_pr(rows, rk.run_dir / "pr_curve.png", f"{', '.join(rows)} on {ctx.dataset}")
        metrics = {"stage": rk.name, "dataset": ctx.dataset, "key": rk.key, "runs": rows, "completed": time.time(),
                   "task": "captions" if captions else "classes"}
        _atomic_json(rk.run_dir / "metrics.json", metrics)
    return RunReport(rk.name, "evaluate", rk.run_dir, False, metrics=metrics, seconds=time.perf_counter() - t0)


def caption_recall_of_run(run_dir: Path, ks: tuple[int, ...] = (1, 5, 10), folds: int = 1) -> dict[str, Any]:
    """Recall metrics of a captions train run's saved test embeddings."""
    from models.metrics import caption_recall

    with np.load(run_dir / "test_embeddings.npz") as z:
        emb = {k: z[k] for k in ("image", "speech", "text") if k in z}
        image_of = z["image_of"]
    try:
        return caption_recall(emb, image_of, ks, folds)
    except ValueError as e:
        raise TrainError(f"{run_dir}: {e}") from None


def plot_recall(names: list[str], runs: dict[str, RunKeys], path: Path, title: str, max_k: int = 50) -> None:
    """Recall@K against K (1..max_k) per run, image -> speech and speech -> image, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.metrics import caption_ranks, cosine_similarity

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for name in names:
        with np.load(runs[name].run_dir / "test_embeddings.npz") as z:
            i2c, c2i = caption_ranks(cosine_similarity(z["image"], z["speech"]), z["image_of"])
        for ax, ranks in zip(axes, (i2c, c2i)):
            k = np.arange(1, max_k + 1)
            ax.plot(k, [100 * np.mean(ranks < kk) for kk in k], label=name)
    for ax, d in zip(axes, ("image -> speech", "speech -> image")):
        ax.set_title(d)
        ax.set_xlabel("K")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("Recall@K (%)")
    save_figure(fig, path, title)


def table_rows(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows (one per run) of MAP mean/std per direction, chance and fold count, for tables."""
    rows = []
    for name, m in runs.items():
        row = {"stage": name, "implementation": m.get("implementation", ""), "folds": len(m["folds"]),
               "chance": m["chance_map"]["mean"]}
        for d in DIRECTIONS:
            row[d] = (m[f"map_{d}"]["mean"], m[f"map_{d}"]["std"])
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text MAP table with chance level beside each row."""
    head = f"{'stage':<14} {'method':<12} {'MAP audio->visual':>18} {'MAP visual->audio':>18} {'chance':>7} {'folds':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{r[d][0]:.3f} ± {r[d][1]:.3f}" for d in DIRECTIONS]
        lines.append(f"{r['stage']:<14} {r['implementation']:<12} {cells[0]:>18} {cells[1]:>18} "
                     f"{r['chance']:>7.3f} {r['folds']:>5}")
    return "\n".join(lines)


def summary_line(m: dict[str, Any]) -> str:
    """'MAP audio->visual 0.61 ± 0.04, visual->audio ... (chance ...), N folds' for one train run."""
    a, v = (f"{m[f'map_{d}']['mean']:.3f} ± {m[f'map_{d}']['std']:.3f}" for d in DIRECTIONS)
    return (f"MAP audio->visual {a}, visual->audio {v} (chance {m['chance_map']['mean']:.3f}), "
            f"{len(m['folds'])} fold(s), {m.get('protocol', '')}")
