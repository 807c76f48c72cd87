"""The one run loop of every train and evaluate stage.

A train stage: lock its run directory, read the trainer's views into items (the task keeps the ones that
qualify), cut them into the task's units, and for each unit not yet committed fit a fresh trainer on the
unit's training items only (with its validation items for model selection; epoch checkpoints resume a
killed run), then save the unit's held-out embeddings; then the final model, one embeddings store per
output modality, the metrics (written last: metrics.json marks the run complete) and the plots.

Run directory: cache/runs/<dataset>/<stage>-<key>/ with params.yaml, the task's unit files
(`folds/<k>/{model.pt, embeddings.npz, history.json, metrics.json}` for `classes`; `checkpoint.pt`,
`model_best.pt`, `history.json`, `training_curve.png`, `test_embeddings.npz` for `pairs`), model.pt,
embeddings/<modality>/, metrics.json and the task's plot. The key hashes the trainer, its VERSION and
params, the views' store keys and what the task reads from the manifest, so e.g. a new triplet margin
trains anew on the cached features, and new folds or labels never reuse a stale run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import yaml

from models.common.base import SelectsEpochs
from models.common.items import Items, build_vocab

from ..cache import hash_key
from ..config import implementation
from ..context import PipelineError
from ..locks import in_use, run_lock
from ..registry import TASKS, TRAINERS
from ..store import ClipResult, StoreError, StoreWriter
from .base import RunKeys, RunReport, TrainError, atomic_json, atomic_save, task_name
from .tasks import VAL_SPLITS, Task, Unit
from .views import read_items

if TYPE_CHECKING:
    from ..context import Context

log = logging.getLogger(__name__)

EpochCallback = Callable[[str, int, int, str, float], None]  # stage, epoch, epochs, score name, score


def _params_yaml(ctx: "Context", rk: RunKeys, extra: dict[str, Any]) -> str:
    info = {"stage": rk.name, "implementation": rk.implementation, "kind": rk.kind,
            "version": implementation(rk.implementation).VERSION, "key": rk.key, "dataset": ctx.dataset,
            "task": rk.task, "params": rk.params, **extra}
    return yaml.safe_dump(info, sort_keys=False)


def _stages(ctx: "Context", rk: RunKeys) -> dict[str, dict[str, Any]]:
    return {v: {"stage": s, "implementation": ctx.stages[s].implementation, "params": ctx.stages[s].params,
                "store": str(ctx.stages[s].store_path),
                "random_weights": bool(ctx.stages[s].attrs.get("random_weights"))} for v, s in rk.views.items()}


def _create(rk: RunKeys, device: str, stages: dict[str, dict[str, Any]], restoring: bool = False) -> Any:
    impl = TRAINERS.get(rk.implementation)
    try:
        return impl.create(impl.Config(**rk.params), device, stages, restoring)
    except ValueError as e:
        raise TrainError(str(e)) from None


def trainer_for(ctx: "Context", rk: RunKeys, device: str = "cpu") -> Any:
    """A fresh trainer of a train stage, built on its upstream stages (a CNN to fine-tune, say)."""
    return _create(rk, device, _stages(ctx, rk))


def _with_vocab(train: Items, trainer: Any) -> Items:
    """Tokens views get the vocabulary of the training items (never of what is held out)."""
    for v in trainer.views():
        if v.form == "tokens":
            train.data[v.name].vocab = build_vocab(train.data[v.name].texts, v.min_count)
    return train


def write_embedding_store(ctx: "Context", rk: RunKeys, modality: str, clip_ids: list[str], emb: np.ndarray,
                          model_on: str, row: str = "clip", path: Path | None = None) -> None:
    """A run's embeddings of one modality as a store under run_dir/embeddings/ (or `path`), replaced whole:
    one row per item for `[n, d]`, an item's rows for `[n, rows, d...]` (AV tensors)."""
    write_rows_store(path or rk.run_dir / "embeddings" / modality, emb, clip_ids, [ctx.clip_keys[c] for c in clip_ids],
                     {"key": rk.key, "stage": rk.name, "dataset": ctx.dataset, "extractor": rk.implementation,
                      "modality": modality, "params": rk.params, "model": model_on},
                     ctx.config.backend, hash_key([rk.key, modality]), row)


def write_rows_store(path: Path, emb: np.ndarray, ids: list[str], keys: list[str], attrs: dict[str, Any], backend: str,
                     shard: str, row: str = "clip") -> None:
    """Embeddings as one committed shard of a store at `path`, replaced whole (`attrs`: whose they are): one row
    per id for `[n, d]`, an id's rows for `[n, rows, d...]`."""
    if path.exists():
        shutil.rmtree(path)
    per_item = emb.ndim == 2
    attrs = {**attrs, "kind": "embedding", "dims": [int(d) for d in emb.shape[1 if per_item else 2:]],
             "dtype": "float32", "frame_rate": None,
             "how_to_read": f"one row per {row}: pipeline.open_store(path)[clip_id]{'[0]' if per_item else ''}"}
    StoreWriter(path, attrs, backend).write_shard(shard, [
        ClipResult(cid, key, (emb[i:i + 1] if per_item else emb[i]).astype(np.float32), None)
        for i, (cid, key) in enumerate(zip(ids, keys))])


def _embedding_stores(ctx: "Context", rk: RunKeys, task: Task, trainer: Any, items: Items, units: list[Unit],
                      model_on: str) -> None:
    rows: dict[str, dict[str, np.ndarray]] = {}
    per_group = trainer.group_outputs()
    for part in task.embed_parts(items, units):
        sub = items.subset(part)
        for modality, arr in trainer.embed(sub).items():
            arr = np.asarray(arr)
            if modality in per_group:
                assert sub.group_of is not None
                arr = arr[sub.group_of]
            has = sub.present.get(modality)  # an optional view's absent items have no such embedding
            for k, (cid, r) in enumerate(zip(sub.ids, arr)):
                if has is None or bool(has[k]):
                    rows.setdefault(modality, {})[cid] = r
    assert ctx.manifest is not None
    what = "item (group outputs: its group's)" if per_group else "clip"
    for modality, by_id in rows.items():
        ids = [c.clip_id for c in ctx.manifest.clips if c.clip_id in by_id]
        write_embedding_store(ctx, rk, modality, ids, np.stack([by_id[c] for c in ids]), model_on, row=what)


def _fit_unit(rk: RunKeys, unit: Unit, trainer: Any, items: Items, unit_dir: Path, init: Path | None,
              on_epoch: EpochCallback | None) -> int:
    """Fit a trainer on one unit's training items (resuming its epoch checkpoint); the epoch it resumed at."""
    import torch

    train = _with_vocab(items.subset(unit.train), trainer)
    val = items.subset(unit.val) if unit.val is not None else None
    ckpt = unit_dir / "checkpoint.pt"
    resumed_at = 0
    epochs = isinstance(trainer, SelectsEpochs)
    if epochs and ckpt.exists():
        trainer.resume(torch.load(ckpt, map_location="cpu", weights_only=True))
        resumed_at = trainer.epoch + 1
        log.info("stage '%s': resuming after epoch %d of %d", rk.name, resumed_at, trainer.total_epochs)
    elif init is not None:
        if not (init / "model.pt").exists():
            raise TrainError(f"the run it starts from has not completed ({init}); run that stage first")
        try:
            trainer.start_from(torch.load(init / "model.pt", map_location="cpu", weights_only=True), train)
        except (ValueError, RuntimeError) as e:
            raise TrainError(f"cannot start from {init}: {e}") from None

    def checkpoint(tr: Any, improved: bool) -> None:
        if improved:
            atomic_save(tr.state_dict(), unit_dir / "model_best.pt")
        atomic_save(tr.checkpoint(), ckpt)  # after model_best: a resume never lacks the best so far
        atomic_json(unit_dir / "history.json", tr.history)
        if on_epoch and tr.score_name:
            on_epoch(rk.name, tr.epoch + 1, tr.total_epochs, tr.score_name, tr.history[f"val_{tr.score_name}"][-1])

    hooks = {"on_epoch": checkpoint} if epochs and val is not None else {}
    try:
        trainer.fit(train, val, **hooks)
    except ValueError as e:  # e.g. too few clips for n_components, a singular covariance
        raise TrainError(f"{unit.name} ({len(unit.train)} training items): {e}") from None
    return resumed_at


def run_train(ctx: "Context", rk: RunKeys, runs: dict[str, RunKeys], device: str = "auto",
              on_wait: Callable[[str], None] | None = None, on_epoch: EpochCallback | None = None) -> RunReport:
    """Train (or resume, or reuse) one train stage's run; see the module docstring."""
    t0 = time.perf_counter()
    task: Task = TASKS.get(rk.task)()
    with run_lock(ctx.config.cache, rk.run_dir, f"stage '{rk.name}'", on_wait), \
            contextlib.ExitStack() as held:
        if (rk.run_dir / "metrics.json").exists():
            metrics = json.loads((rk.run_dir / "metrics.json").read_text())
            folds = metrics.get("folds")
            return RunReport(rk.name, "train", rk.run_dir, True, units_reused=len(folds) if isinstance(folds, dict) else 1,
                             metrics=metrics, seconds=time.perf_counter() - t0)
        for stage in set(rk.views.values()):
            held.enter_context(in_use(ctx.config.cache, ctx.stages[stage].store_path))
        stages = _stages(ctx, rk)
        trainer = _create(rk, device, stages)
        try:
            items, skipped = read_items(ctx, rk, trainer, task)
        except (ValueError, StoreError) as e:
            raise TrainError(str(e)) from None
        protocol, units, info = task.plan(items, rk.params)
        rk.run_dir.mkdir(parents=True, exist_ok=True)
        init = runs[rk.init_from].run_dir if rk.init_from else None
        (rk.run_dir / "params.yaml").write_text(_params_yaml(ctx, rk, {
            **info, "upstream": stages, "left_out": len(skipped), "device": device,
            "init_from": {"stage": rk.init_from, "run": str(init)} if init else None, **trainer.describe()}))
        report = RunReport(rk.name, "train", rk.run_dir, False)
        fitted: dict[str, Any] = {}
        resumed_at = 0
        for unit in units:
            if task.committed(rk.run_dir, unit):
                report.units_reused += 1
                continue
            tu = time.perf_counter()
            trainer = trainer if not fitted else _create(rk, device, stages)
            unit_dir = task.unit_dir(rk.run_dir, unit)
            resumed_at = _fit_unit(rk, unit, trainer, items, unit_dir, init, on_epoch)
            task.save_unit(rk.run_dir, unit, trainer, items.subset(unit.test), time.perf_counter() - tu)
            fitted[unit.name] = trainer
            report.units_trained += 1
        for leftover in (rk.run_dir / "folds").glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if task.final == "refit" and protocol == "folds":
            final = _create(rk, device, stages)
            _fit_unit(rk, Unit("final model", np.arange(len(items)), np.arange(0)), final, items, rk.run_dir, None, None)
            atomic_save(final.state_dict(), rk.run_dir / "model.pt")
            model_on = "all clips (after cross-validation)"
        else:
            unit = units[0]
            final = fitted.get(unit.name) or load_trainer(rk.run_dir, None if task.unit_dir(rk.run_dir, unit) == rk.run_dir
                                                          else unit.name, device)
            if task.unit_dir(rk.run_dir, unit) != rk.run_dir:
                shutil.copyfile(task.unit_dir(rk.run_dir, unit) / "model.pt", rk.run_dir / "model.pt")
            model_on = "the train split" if task.final == "refit" else "the best validation epoch"
        _embedding_stores(ctx, rk, task, final, items, units, model_on)
        task.write_stores(ctx, rk, final, items, units)
        metrics = task.metrics(rk.run_dir, rk.params)
        if isinstance(metrics.get("folds"), dict):  # per-fold metrics beside each fold's embeddings
            for name, m in metrics["folds"].items():
                atomic_json(rk.run_dir / "folds" / name / "metrics.json", m)
        metrics.update({"stage": rk.name, "implementation": rk.implementation, "task": rk.task, "protocol": protocol,
                        "dataset": ctx.dataset, "key": rk.key, "left_out": len(skipped)})
        if "splits" in info:
            metrics["evaluated_on"] = info["splits"]["test"]
        if isinstance(final, SelectsEpochs):
            metrics.update(final.selection())
            metrics["resumed_at_epoch"] = resumed_at
        task.plot({rk.name: (rk.run_dir, metrics)}, rk.run_dir, f"{rk.name} on {ctx.dataset} ({protocol})")
        metrics["completed"] = time.time()
        atomic_json(rk.run_dir / "metrics.json", metrics)  # last: marks the run complete
        report.metrics = metrics
    report.seconds = time.perf_counter() - t0
    return report


def run_evaluate(ctx: "Context", rk: RunKeys, runs: dict[str, RunKeys],
                 on_wait: Callable[[str], None] | None = None) -> RunReport:
    """Score the upstream train runs with this stage's params: one table, one plot."""
    t0 = time.perf_counter()
    task: Task = TASKS.get(rk.task)()
    with run_lock(ctx.config.cache, rk.run_dir, f"stage '{rk.name}'", on_wait):
        if (rk.run_dir / "metrics.json").exists():
            metrics = json.loads((rk.run_dir / "metrics.json").read_text())
            return RunReport(rk.name, "evaluate", rk.run_dir, True, metrics=metrics, seconds=time.perf_counter() - t0)
        rk.run_dir.mkdir(parents=True, exist_ok=True)
        rows: dict[str, Any] = {}
        dirs: dict[str, Path] = {}
        for name in rk.upstream_runs:
            if name in rk.foreign:
                rows[name], dirs[name] = _evaluate_foreign(ctx, rk, name, task)
                continue
            up = runs[name]
            dirs[name] = up.run_dir
            if not (up.run_dir / "metrics.json").exists():
                raise TrainError(f"train stage '{name}' has not completed ({up.run_dir}); "
                                 f"run `pipeline run train --dataset {ctx.dataset} --stage {name}`")
            done = json.loads((up.run_dir / "metrics.json").read_text())
            m = task.metrics(up.run_dir, rk.params)
            m.update({k: done[k] for k in ("protocol", "evaluated_on") if k in done})
            m.update({"run": str(up.run_dir), "implementation": up.implementation})
            rows[name] = m
        (rk.run_dir / "params.yaml").write_text(_params_yaml(ctx, rk, {
            "runs": {n: str((rk.foreign.get(n) or runs[n]).run_dir) for n in rk.upstream_runs}}))
        task.plot({n: (dirs[n], m) for n, m in rows.items()}, rk.run_dir, f"{', '.join(rows)} on {ctx.dataset}")
        metrics = {"stage": rk.name, "dataset": ctx.dataset, "key": rk.key, "runs": rows, "completed": time.time(),
                   "task": rk.task}
        atomic_json(rk.run_dir / "metrics.json", metrics)
    return RunReport(rk.name, "evaluate", rk.run_dir, False, metrics=metrics, seconds=time.perf_counter() - t0)


def _evaluate_foreign(ctx: "Context", rk: RunKeys, name: str, task: Task) -> tuple[dict[str, Any], Path]:
    """Apply the final model of train stage `name`, trained on another dataset, to this dataset's test split
    (its val split where there is none, else every item), write what the task scores under
    run_dir/<name>/, and score it."""
    theirs, local = rk.foreign[name], rk.local[name]
    trained_on = theirs.run_dir.parent.name
    if not (theirs.run_dir / "metrics.json").exists():
        raise TrainError(f"train stage '{name}' has not completed on dataset '{trained_on}' ({theirs.run_dir}); run "
                         f"`pipeline run train --dataset {trained_on} --stage {name}` first")
    try:
        trainer = load_trainer(theirs.run_dir)
    except (ValueError, OSError) as e:  # e.g. its word vectors file moved or changed
        raise TrainError(f"cannot load the model of {theirs.run_dir}: {e}") from None
    try:
        items, skipped = read_items(ctx, local, trainer, task)
    except (ValueError, StoreError) as e:
        raise TrainError(str(e)) from None
    splits = [str(c.split).lower() for c in items.media]
    split = next((s for s in ("test", *VAL_SPLITS) if s in splits), None)
    test = np.array([i for i, s in enumerate(splits) if split is None or s == split], dtype=np.int64)
    if not len(test):
        raise TrainError(f"dataset '{ctx.dataset}' has no item that stage '{rk.name}' can score")
    unit = Unit("transfer", np.zeros(0, dtype=np.int64), test)
    out = rk.run_dir / name
    out.mkdir(parents=True, exist_ok=True)
    task.save_unit(out, unit, trainer, items.subset(test), 0.0)
    task.write_stores(ctx, RunKeys(name, local.implementation, "train", local.params, rk.key, out, rk.task, local.views),
                      trainer, items, [unit])
    metrics = task.metrics(out, rk.params)
    metrics.update({"run": str(theirs.run_dir), "implementation": theirs.implementation, "model_dataset": trained_on,
                    "evaluated_on": split or "all", "left_out": len(skipped)})
    return metrics, out


def run_training_stage(ctx: "Context", rk: RunKeys, runs: dict[str, RunKeys], device: str = "auto",
              on_wait: Callable[[str], None] | None = None, on_epoch: EpochCallback | None = None) -> RunReport:
    """Run one train or evaluate stage."""
    try:
        if rk.kind == "train":
            return run_train(ctx, rk, runs, device, on_wait, on_epoch)
        return run_evaluate(ctx, rk, runs, on_wait)
    except (TrainError, PipelineError) as e:
        raise TrainError(f"stage '{rk.name}': {e}") from None


def load_trainer(run_dir: str | os.PathLike, unit: str | None = None, device: str = "cpu") -> Any:
    """A fitted trainer from a run directory (its final model, or one fold's)."""
    import torch

    run_dir = Path(run_dir)
    info = yaml.safe_load((run_dir / "params.yaml").read_text())
    rk = RunKeys(info["stage"], info["implementation"], "train", info["params"], info["key"], run_dir,
                 task_name(info.get("task")))
    stages = {v: {**s, "params": s.get("params", {})} for v, s in (info.get("upstream") or {}).items()}
    if "finetune_cnn" in info and info["finetune_cnn"] and "params" in info["finetune_cnn"]:  # runs before the core
        ft = info["finetune_cnn"]
        stages["visual"] = {"stage": ft["stage"], "implementation": ft["implementation"], "params": ft["params"]}
    trainer = _create(rk, device, stages, restoring=True)
    path = run_dir / ("model.pt" if unit is None else f"folds/{unit}/model.pt")
    return trainer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
