"""Which runs a config asks for: the key and run directory of every train and evaluate stage, the upstream
stage bound to each view of its trainer, its task; which run stages do not apply to a dataset; and
their status."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from models.common.base import Trainer

from ..cache import hash_key
from ..config import PipelineConfig, implementation, key_params
from ..registry import EVALUATORS, TASKS, TRAINERS
from .base import RunKeys, TrainError, is_run_stage

if TYPE_CHECKING:
    from ..context import Context
    from ..datasets import Manifest
    from ..plan import Plan


def task_for(impl: Any, manifest: "Manifest | None") -> str:
    """The first of a trainer's tasks that applies to the dataset (its first task when none does)."""
    tasks = list(impl.tasks)
    if manifest is not None:
        for t in tasks:
            if TASKS.get(t)().applies(manifest) is None:
                return t
    return tasks[0]


def applies(impl: Any, manifest: "Manifest") -> str | None:
    """Why a trainer cannot learn from this dataset (none of its tasks applies), or None when it can."""
    reasons = [TASKS.get(t)().applies(manifest) for t in impl.tasks]
    return None if any(r is None for r in reasons) else reasons[-1]  # the last task is the most general fallback


def bind_views(ctx: "Context", name: str, trainer: Any, chosen: dict[str, str] | None = None) -> dict[str, str]:
    """View name -> the upstream feature stage it reads, among the stages resolved in `ctx` (view_bindings)."""
    modalities = {n: sk.attrs.get("modality") for n, sk in ctx.stages.items()}
    return view_bindings(ctx.config, name, trainer, modalities, ctx.dataset, chosen)


def view_bindings(cfg: PipelineConfig, name: str, trainer: Any, available: dict[str, str | None], dataset: str,
                  chosen: dict[str, str] | None = None) -> dict[str, str]:
    """View name -> the upstream feature stage it reads: the stage named in `chosen` (an evaluate stage's
    `views`, applying the model to other features) or in the stage's `views`, else the one upstream stage of
    the view's modality among `available` (feature stage -> modality: those that apply to `dataset`)."""
    spec = cfg.stages[name]
    named = {**spec.views, **(chosen or {})}
    bound: dict[str, str] = {}
    for v in trainer.views():
        if v.form == "tokens":
            continue  # text comes from the manifest
        if v.name in named:
            stage = named[v.name]
            if stage not in available:
                raise TrainError(f"stage '{name}': view '{v.name}' reads stage '{stage}', which has no feature store "
                                 f"for dataset '{dataset}'")
            bound[v.name] = stage
            continue
        found = [u for u in spec.upstream if u in available and available[u] == v.modality]
        if len(found) > 1:
            raise TrainError(f"stage '{name}': upstream stages '{found[0]}' and '{found[1]}' are both {v.modality} for "
                             f"dataset '{dataset}'; name the one view '{v.name}' reads under the stage's `views`")
        if not found:
            raise TrainError(f"stage '{name}' has no {v.modality} upstream stage that applies to dataset "
                             f"'{dataset}' (its upstream: {', '.join(spec.upstream) or 'none'}); add an "
                             f"extract (media datasets) or import (feature datasets) stage of that modality")
        bound[v.name] = found[0]
    return bound


def model_dataset(cfg: PipelineConfig, name: str, dataset: str) -> str | None:
    """The other dataset whose trained models an evaluate stage applies to `dataset` (`model_dataset`), or None."""
    other = cfg.params_for(name, dataset).get("model_dataset") if implementation(cfg.stages[name].implementation).name \
        in EVALUATORS else None
    return other if other and other != dataset else None


def _foreign(ctx: "Context", name: str, spec: Any, impl: Any, params: dict[str, Any], other: "Context") -> RunKeys:
    """An evaluate stage that applies the models of its train stages, trained on another dataset, to this one."""
    cfg = ctx.config
    ups = [u for u in spec.upstream if cfg.stages[u].implementation in TRAINERS]
    if not ups:
        raise TrainError(f"stage '{name}' evaluates train stages; list them under its upstream")
    task = impl.task
    why = TASKS.get(task)().applies(ctx.manifest) if ctx.manifest is not None else None
    if why:
        raise TrainError(f"stage '{name}' scores '{task}' on dataset '{ctx.dataset}', and {why}")
    theirs = resolve_runs(other, ups)
    local: dict[str, RunKeys] = {}
    for u in ups:
        trainer_cls = TRAINERS.get(cfg.stages[u].implementation)
        if task not in getattr(trainer_cls, "tasks", ()):
            raise TrainError(f"stage '{name}' scores '{task}', which '{u}' ({trainer_cls.name}) does not learn")
        trainer = trainer_cls(trainer_cls.Config(**theirs[u].params), "cpu")
        views = bind_views(ctx, u, trainer, spec.views)  # the evaluate stage may bind views to its own stages
        local[u] = RunKeys(u, theirs[u].implementation, "train", theirs[u].params, theirs[u].key, theirs[u].run_dir,
                           task, views)
    ident = {"implementation": spec.implementation, "version": impl.VERSION, "params": params,
             "models": {u: [other.dataset, theirs[u].key] for u in ups},
             "views": {u: {v: ctx.stages[s].view_key for v, s in sorted(local[u].views.items())} for u in ups}}
    if ctx.manifest is not None:
        t = TASKS.get(task)()
        ident[t.digest_field] = t.digest(ctx)
    key = hash_key(ident)
    return RunKeys(name, spec.implementation, "evaluate", params, key, cfg.cache / "runs" / ctx.dataset / f"{name}-{key}",
                   task, upstream_runs=ups, foreign=theirs, local=local)


def resolve_runs(ctx: "Context", names: list[str], others: dict[str, "Context"] | None = None,
                 exact: bool = False) -> dict[str, RunKeys]:
    """Keys and run directories of the train/evaluate stages among `names` and upstream of them (`exact`: among
    `names` only, as a plan lists them; feature stages resolved in ctx); `others`: the contexts of the datasets
    whose models evaluate stages with `model_dataset` apply here."""
    cfg = ctx.config
    runs: dict[str, RunKeys] = {}
    root = cfg.cache / "runs" / ctx.dataset
    for name in cfg.order(names):
        if exact and name not in names:
            continue
        spec = cfg.stages[name]
        impl = implementation(spec.implementation)
        if not is_run_stage(impl):
            continue
        params = cfg.params_for(name, ctx.dataset)
        other = model_dataset(cfg, name, ctx.dataset)
        if other is not None:
            if others is None or other not in others:
                raise TrainError(f"stage '{name}' applies the models of dataset '{other}'; resolve it with that "
                                 "dataset's context (pipeline.run does)")
            runs[name] = _foreign(ctx, name, spec, impl, params, others[other])
            continue
        if impl.name in TRAINERS:
            task = task_for(impl, ctx.manifest)
            try:
                trainer = impl(impl.Config(**params), "cpu")
            except ValueError as e:
                raise TrainError(f"stage '{name}': {e}") from None
            views = bind_views(ctx, name, trainer)
            ident: dict[str, Any] = {"implementation": spec.implementation, "version": impl.VERSION,
                                     "params": key_params(impl.Config, params),
                                     "views": {v: ctx.stages[s].view_key for v, s in sorted(views.items())}}
            if ctx.manifest is not None:
                t = TASKS.get(task)()
                ident[t.digest_field] = t.digest(ctx)
            inits = [u for u in spec.upstream if u in runs and runs[u].kind == "train"]
            if len(inits) > 1:
                raise TrainError(f"stage '{name}' lists train stages {', '.join(inits)} upstream; it can start "
                                 "from one model only")
            if inits:
                if type(trainer).start_from is Trainer.start_from:
                    raise TrainError(f"stage '{name}' ({spec.implementation}) cannot start from another run "
                                     f"('{inits[0]}'); its trainer cannot be fine-tuned")
                ident["init"] = runs[inits[0]].key
            key = hash_key(ident)
            runs[name] = RunKeys(name, spec.implementation, "train", params, key, root / f"{name}-{key}", task,
                                 views, init_from=inits[0] if inits else None)
        else:
            ups = [u for u in spec.upstream if u in runs and runs[u].kind == "train"]
            if not ups:
                raise TrainError(f"stage '{name}' evaluates train stages; list them under its upstream "
                                 f"(its upstream: {', '.join(spec.upstream) or 'none'})")
            task = impl.task
            wrong = [u for u in ups if runs[u].task != task]
            if wrong:
                raise TrainError(f"evaluate stage '{name}' ({spec.implementation}) scores '{task}' runs, and train "
                                 f"stage '{wrong[0]}' ({runs[wrong[0]].implementation}) learns '{runs[wrong[0]].task}': "
                                 f"use an evaluator of that task ({', '.join(n for n in EVALUATORS.names() if getattr(EVALUATORS.get(n), 'task', None) == runs[wrong[0]].task)})")
            key = hash_key({"implementation": spec.implementation, "version": impl.VERSION, "params": params,
                            "runs": [runs[u].key for u in ups]})
            runs[name] = RunKeys(name, spec.implementation, "evaluate", params, key, root / f"{name}-{key}", task,
                                 upstream_runs=ups)
    return runs


def run_status(ctx: "Context", names: list[str], plan: "Plan",
               others: dict[str, "Context"] | None = None) -> list[dict[str, Any]]:
    """Train/evaluate stages of the plan: up to date / partial k units / missing / stale, by their run
    directories (`others`: the contexts of datasets whose models evaluate stages apply here)."""
    rows = []
    for name in names:
        row = {"stage": name, "done": 0, "total": 0, "failed": 0, "store": None}
        try:
            rk = resolve_runs(ctx, plan.closure([name]), others, exact=True).get(name)
        except TrainError as e:
            rows.append({**row, "state": f"cannot resolve: {e}"})
            continue
        if rk is None:
            continue
        folds = [p for p in (rk.run_dir / "folds").glob("*/embeddings.npz")  # (not a unit still being written)
                 if not p.parent.name.startswith(".")] if rk.kind == "train" else []
        if (rk.run_dir / "metrics.json").exists():
            state = "up to date"
        elif folds:
            state = f"partial: {len(folds)} fold(s) committed"
        elif rk.kind == "train" and any(rk.run_dir.glob("**/checkpoint.pt")):
            state = "partial: epoch checkpoints saved"
        elif any(p != rk.run_dir and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}", p.name)  # not `dsve-pointing-*`
                 for p in rk.run_dir.parent.glob(f"{name}-*")):
            state = "stale (params, code or upstream changed since the last run)"
        else:
            state = "missing"
        rows.append({**row, "state": state, "store": str(rk.run_dir)})
    return rows
