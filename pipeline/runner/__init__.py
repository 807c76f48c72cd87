"""Run stages of the DAG for a dataset: resolve keys, reuse what is committed, compute the rest in shards.

Modules: `stagekeys` (resolve: keys, attrs and row keys), `feature_stage` (one feature stage's run), `shards` (one
shard, in a worker), `state` (status, dry run), `cache_gc` (ls, gc). `run` is here; import from `pipeline.runner`.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from typing import Any

from ..config import PipelineConfig, implementation, load_config
from ..context import PipelineError
from ..events import RunEvents
from ..locks import in_use
from ..plan import make_plan, reads_from_dataset
from ..training import TrainError, resolve_runs, run_training_stage
from .cache_gc import collect_garbage, garbage, list_cache
from .feature_stage import StageReport, run_feature_stage
from .shards import MAX_SHARD, MIN_SHARD, SHARD_BYTES, ShardTask, run_shard, shard_size_for
from .stagekeys import _model_contexts, item_rows, make_adapter, resolve
from .state import dry_run, status

__all__ = ["MAX_SHARD", "MIN_SHARD", "SHARD_BYTES", "PipelineError", "RunEvents", "ShardTask", "StageReport",
           "collect_garbage", "dry_run", "garbage", "in_use", "item_rows", "list_cache", "make_adapter", "resolve",
           "run", "run_feature_stage", "run_shard", "shard_size_for", "status"]


def _check_media_backends(backends: set[str]) -> None:
    """Refuse, before any work, a media backend whose library or programs are not installed."""
    import importlib.util

    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if "ffmpeg" in backends and missing:
        raise PipelineError(f"media backend ffmpeg: {' and '.join(missing)} not found on PATH; install Debian's "
                            "ffmpeg (apt-get install ffmpeg), or use --media-backend pyav")
    if "pyav" in backends and importlib.util.find_spec("av") is None:
        raise PipelineError("media backend pyav: the `av` package (PyAV) is not installed; `pip install av` "
                            "(or run `bash .ci/setup`), or use --media-backend ffmpeg")


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _check_devices(devices: list[str]) -> None:
    """Refuse, before any work starts, a device that is no device name, and a CUDA or MPS device on a machine
    without one."""
    for d in sorted(set(devices)):
        if not _DEVICE.fullmatch(d):
            raise PipelineError(f"device '{d}' is not one this pipeline runs on; use auto, cpu, cuda, cuda:N "
                                "(a GPU's index) or mps (Apple silicon)")
    if "mps" in devices:
        import torch

        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise PipelineError("device mps asked for, but this machine has no MPS device (Apple silicon with "
                                "a torch built for it); use --device cpu or --device auto")
    wanted = sorted({d for d in devices if d.startswith("cuda")})
    if not wanted:
        return
    from extractors._torch import cuda_present

    if not cuda_present():  # no NVIDIA device node: say so without torch's slow driver probe
        raise PipelineError(f"device {wanted[0]} asked for, but this machine has no CUDA device (no /dev/nvidia*); "
                            "use --device cpu or --device auto")
    import torch

    if not torch.cuda.is_available():
        raise PipelineError(f"device {wanted[0]} asked for, but this machine has no CUDA device "
                            "(torch.cuda.is_available() is False); use --device cpu or --device auto")
    n = torch.cuda.device_count()
    for d in wanted:
        index = d.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= n):
            raise PipelineError(f"device {d} asked for, but this machine has {n} CUDA device(s) "
                                f"(cuda:0 to cuda:{n - 1})")


def run(group: str | None = "extract", dataset: str | None = None, stage: str | None = None,
        overrides: list[str] | tuple[str, ...] = (), config: str | os.PathLike | PipelineConfig = "stages.yaml",
        cache: str | os.PathLike | None = None, strict: bool = False, events: RunEvents | None = None,
        retry_failed: bool = False, **execution: Any) -> list[Any]:
    """Run a group (or one stage) and everything upstream for a dataset; return a report per stage
    (a StageReport per feature stage, a pipeline.training.RunReport per train/evaluate stage). `events`
    hears the run's progress, waits, plans, skips, epochs and notices (what it found and did on the way: damaged
    shards recomputed, dataset entries skipped); without it, a `RunEvents()` logs them.
    Failed clips whose failure may not recur are retried; `retry_failed`: every failed clip."""
    events = events or RunEvents()
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, overrides, cache)
    adapter = make_adapter(cfg, dataset)
    plan = make_plan(cfg, adapter, group, stage)
    names = plan.selected
    _check_devices([cfg.execution_for(n, plan.dataset, **execution).device for n in names])
    for n, p in plan.stages.items():  # the group's stages that do not apply, said once (not every other stage)
        if not p.runs and n in plan.why_not and stage is None and cfg.stages[n].group == group:
            events.skip(n, plan.why_not[n])
    _check_media_backends({cfg.execution_for(n, plan.dataset, **execution).media_backend for n in names
                           if reads_from_dataset(implementation(cfg.stages[n].implementation)) == "media"})
    ctx = resolve(cfg, dataset, prepare=True, only=names, exact=True, manifest=plan.manifest, execution=execution)
    if ctx.manifest is not None and ctx.manifest.skipped:
        shown = "; ".join(f"{p} ({why})" for p, why in ctx.manifest.skipped[:5])
        more = len(ctx.manifest.skipped) - 5
        events.notice(f"dataset '{ctx.dataset}': skipped {len(ctx.manifest.skipped)} "
                      f"entr{'y' if len(ctx.manifest.skipped) == 1 else 'ies'} that are not media "
                      f"files: {shown}{f'; and {more} more' if more > 0 else ''}")
    from ..executors import Executor

    try:
        runs = resolve_runs(ctx, names, _model_contexts(cfg, plan), exact=True)
    except TrainError as e:
        raise PipelineError(str(e)) from None
    reports: list[Any] = []
    with Executor() as executor, contextlib.ExitStack() as using:
        models = [f.run_dir for rk in runs.values() for f in rk.foreign.values()]  # other datasets' runs read here
        for path in [sk.store_path for sk in ctx.stages.values()] + [rk.run_dir for rk in runs.values()] + models:
            using.enter_context(in_use(cfg.cache, path))  # until the run ends: gc leaves what it makes or reads
        for name in names:
            ex = cfg.execution_for(name, ctx.dataset, **execution)
            if name in runs:
                try:
                    reports.append(run_training_stage(ctx, runs[name], runs, ex.device, events.wait, events.epoch))
                except TrainError as e:
                    raise PipelineError(str(e)) from None
                continue
            if name not in ctx.stages:
                raise PipelineError(f"stage '{name}' cannot run on dataset '{ctx.dataset}' (an upstream stage "
                                    "does not apply to it)")
            rep = run_feature_stage(ctx, name, ex, events, executor, retry_failed)
            reports.append(rep)
            if strict and rep.failed:
                raise PipelineError(f"stage '{name}': {rep.failed} clip(s) failed and --strict is set; "
                                    f"see {rep.failures_log}")
    return reports
