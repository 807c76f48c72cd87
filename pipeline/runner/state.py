"""What is done and what a run would do, computing nothing: `status` (each stage's state, like `dvc status`) and
`dry_run` (each stage's action, with the clips and bytes it would write)."""
from __future__ import annotations

import json
import os
from typing import Any

from ..config import PipelineConfig, load_config
from ..context import PipelineError, cache_paths, committed
from ..datasets import Clip, DatasetError
from ..plan import make_plan
from ..store import repair_command, scan_store
from ..training import TrainError, resolve_runs, run_status
from .stagekeys import _model_contexts, make_adapter, resolve


def status(config: PipelineConfig, dataset: str | None, everything: bool = False) -> list[dict[str, Any]]:
    """Per stage the plan runs for the dataset: up to date / missing / partial N of M clips / stale, like
    `dvc status`; `everything`: the stages left out too, each with its reason."""
    from ..media.common import is_transient

    adapter = make_adapter(config, dataset)
    plan = make_plan(config, adapter, prepare=False)
    names = plan.selected
    errors: dict[str, str] = {}
    ctx = resolve(config, dataset, errors=errors, only=names, exact=True, manifest=plan.manifest)
    assert ctx.manifest is not None
    index = cache_paths(config.cache)["index"] / ctx.dataset
    rows: dict[str, dict[str, Any]] = {}
    for name, why in errors.items():
        rows[name] = {"stage": name, "state": f"cannot resolve: {why}", "done": 0, "total": 0, "failed": 0,
                      "store": None}
    for name, sk in ctx.stages.items():
        scan = scan_store(sk.store_path, ctx.rows[name])
        done, _, failures = committed(scan, ctx.rows[name])
        total = len(ctx.manifest.clips)
        pointer = index / f"{name}.json"
        try:
            last = json.loads(pointer.read_text())
        except (OSError, ValueError):
            last = None
        old = sk.legacy_path is not None and (sk.legacy_path / "commits").is_dir() and len(done) < total
        if scan.is_damaged:
            n = len(scan.damaged)
            state = (f"damaged {n} shard{'s' if n != 1 else ''}" if n else "damaged") + \
                f": {scan.describe_damage()}; run {repair_command(sk.attrs, sk.store_path, ctx.dataset)} to repair it"
        elif old:
            state = (f"in the old layout ({sk.legacy_path}): the next `pipeline run` moves its shards into the shared "
                     "store, recomputing nothing")
        elif len(done) == total:
            state = "up to date"
        elif isinstance(last, dict) and last.get("store_key") != sk.store_key and not done:
            state = "stale (params, code or upstream changed since the last run)"
        elif done:
            state = f"partial {len(done)} of {total} clips"
        else:
            state = "missing"
        transient = sum(1 for f in failures if f.get("transient", is_transient(f["reason"])))
        rows[name] = {"stage": name, "state": state, "done": len(done), "total": total, "failed": len(failures),
                      "transient": transient, "store": str(sk.store_path), "damaged": dict(scan.damaged)}
    run_names = [n for n in names if n not in ctx.stages and n not in errors]
    try:
        others = _model_contexts(config, plan)
    except Exception:  # noqa: BLE001  (another dataset not at hand: those stages say they cannot resolve)
        others = None
    for row in run_status(ctx, run_names, plan, others):
        rows[row["stage"]] = row
    out = [rows[n] for n in names if n in rows]
    if everything:
        out += [{"stage": n, "state": f"left out: {p.reason}", "done": 0, "total": 0, "failed": 0, "store": None}
                for n, p in plan.stages.items() if not p.runs]
    return out


_UNKNOWN_LENGTH_S = 10.0  # a clip of unknown length, in the dry run's store sizes (VEGAS and AudioSet clips)


def _row_estimate(attrs: dict[str, Any], clips: list[Clip]) -> tuple[int, bool]:
    """Bytes the clips' rows take in a store with these attrs, and whether a clip's length was guessed."""
    import numpy as np

    if attrs.get("dims") is None or not attrs.get("dtype"):
        return 0, True
    row = int(np.prod(attrs["dims"] or [1])) * np.dtype(attrs["dtype"]).itemsize
    rate, total, guessed = attrs.get("frame_rate"), 0, False
    for c in clips:
        if not rate or ("image" in c.media and "video" not in c.media and attrs.get("modality") == "visual"):
            rows = 1.0
        elif c.start is not None and c.end is not None:
            rows = rate * (c.end - c.start)
        else:
            rows, guessed = rate * _UNKNOWN_LENGTH_S, True
        total += int(max(1.0, rows)) * row
    return total, guessed


def dry_run(group: str | None = "extract", dataset: str | None = None, stage: str | None = None,
            config: str | os.PathLike | PipelineConfig = "stages.yaml", **execution: Any) -> list[dict[str, Any]]:
    """What `run` would do, computing nothing: per stage, in DAG order, its action (compute, reuse, train,
    evaluate, left out, cannot resolve), the reason, and for a store to compute the clips and bytes it would
    write. A generated dataset is generated (its manifest decides what applies)."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    plan = make_plan(cfg, make_adapter(cfg, dataset), group, stage)
    errors: dict[str, str] = {}
    ctx = resolve(cfg, dataset, only=plan.selected, exact=True, manifest=plan.manifest, execution=execution,
                  errors=errors)
    try:
        runs = resolve_runs(ctx, [n for n in plan.selected if n not in errors and n not in ctx.stages],
                            _model_contexts(cfg, plan), exact=True)
    except (TrainError, PipelineError, DatasetError) as e:
        runs, errors = {}, {**errors, **{n: str(e) for n in plan.selected if n not in ctx.stages}}
    rows = []
    for name, step in plan.stages.items():
        row = {"stage": name, "action": "left out", "reason": step.reason, "clips": 0, "bytes": 0, "estimated": False}
        if not step.runs:
            pass
        elif name in errors:
            row.update(action="cannot resolve", reason=errors[name])
        elif name in ctx.stages:
            sk = ctx.stages[name]
            assert ctx.manifest is not None
            done, _, _ = committed(scan_store(sk.store_path, ctx.rows[name]), ctx.rows[name])
            todo = [c for c in ctx.manifest.clips if c.clip_id not in done]
            size, guessed = _row_estimate(sk.attrs, list({ctx.rows[name][c.clip_id]: c for c in todo}.values()))
            row.update(action="compute" if todo else "reuse", clips=len(todo), bytes=size, estimated=guessed,
                       total=len(ctx.manifest.clips), store=str(sk.store_path))
        elif name in runs:
            rk = runs[name]
            done = (rk.run_dir / "metrics.json").exists()
            row.update(action="reuse" if done else ("train" if rk.kind == "train" else "evaluate"), store=str(rk.run_dir))
        rows.append(row)
    return rows
