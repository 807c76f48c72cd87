"""What the cache holds (`list_cache`, for `pipeline ls`) and what no current key references (`garbage`,
`collect_garbage`, for `pipeline gc`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..config import PipelineConfig, implementation
from ..context import Context, cache_paths
from ..locks import run_lock_path, store_lock, unused
from ..plan import make_plan
from ..store import ATTRS_FILE, scan_store
from ..training import TrainError, is_run_stage, resolve_runs
from .stagekeys import resolve


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _is_store(path: Path) -> bool:
    return (path / "commits").is_dir() or (path / ATTRS_FILE).exists()


def _store_dirs(stores: Path) -> list[Path]:
    """Every store directory: shared ones (`stores/<stage>-<key>`) and those of one dataset from before rows were
    keyed by content (`stores/<dataset>/<stage>-<key>`)."""
    out = []
    for d in sorted(stores.glob("*")) if stores.is_dir() else []:
        if not d.is_dir() or d.name.startswith("."):
            continue
        if _is_store(d):
            out.append(d)
        else:
            out.extend(p for p in sorted(d.glob("*")) if p.is_dir() and not p.name.startswith(".") and _is_store(p))
    return out


def _referenced(config: PipelineConfig) -> dict[Path, list[str]]:
    """Store path -> the datasets whose index (the last run of each stage) points at it."""
    refs: dict[Path, list[str]] = {}
    for pointer in sorted(cache_paths(config.cache)["index"].glob("*/*.json")):
        try:
            store = json.loads(pointer.read_text()).get("store")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(store, str):
            refs.setdefault(Path(store), []).append(pointer.parent.name)
    return refs


def list_cache(config: PipelineConfig) -> list[dict[str, Any]]:
    """Every store (and run) in the cache with its size, rows and the datasets that read it."""
    out = []
    stores = cache_paths(config.cache)["stores"]
    refs = _referenced(config)
    for path in _store_dirs(stores):
        scan = scan_store(path)
        attrs = scan.attrs or {}
        legacy = path.parent != stores
        n = sum(len(r["clips"]) for r in scan.records)
        out.append({"kind": "store", "path": str(path), "datasets": [path.parent.name] if legacy else refs.get(path, []),
                    "legacy": legacy, "stage": attrs.get("stage", path.name.rsplit("-", 1)[0]),
                    "extractor": attrs.get("extractor"), "params": attrs.get("params"), "rows": n,
                    "bytes": _size(path), "damaged": scan.describe_damage() if scan.is_damaged else None})
    runs = cache_paths(config.cache)["runs"]
    for params_path in sorted(runs.glob("*/*/params.yaml")):
        out.append({"kind": "run", "path": str(params_path.parent), "bytes": _size(params_path.parent)})
    return out


def _current_runs(config: PipelineConfig, ctx: Context) -> set[Path]:
    """Run directories of the context's dataset that a current key references."""
    name = ctx.dataset
    run_stages = [n for n in config.stages if is_run_stage(implementation(config.stages[n].implementation))]
    if not run_stages:
        return set()
    plan = make_plan(config, ctx.adapter, manifest=ctx.manifest, prepare=False)
    keep: set[Path] = set()
    for stage in run_stages:
        if stage in plan.why_not:
            continue
        try:
            keep.update(rk.run_dir for rk in resolve_runs(ctx, plan.closure([stage]), exact=True).values())
        except TrainError:  # unknown current key: keep every run of that stage
            keep.update((config.cache / "runs" / name).glob(f"{stage}-*"))
    return keep


def garbage(config: PipelineConfig, everything: bool = False) -> tuple[list[Path], list[str]]:
    """Stores and run directories that no current key of any dataset in stages.yaml references, and what was
    left alone. Those only datasets stages.yaml does not name read are left alone unless `everything`."""
    keep: set[Path] = set()
    skipped: list[str] = []
    stores, runs = cache_paths(config.cache)["stores"], cache_paths(config.cache)["runs"]
    refs = _referenced(config)
    by_dataset: dict[str, set[Path]] = {}
    for path, names in refs.items():
        for n in names:
            by_dataset.setdefault(n, set()).add(path)
    for name in config.datasets:
        unresolved: dict[str, str] = {}
        try:  # with its manifest: a dataset whose data is not here reads no row of a shared store
            ctx = resolve(config, name, errors=unresolved)
        except Exception as e:  # a dataset we cannot read keeps its old stores and those its last runs wrote
            skipped.append(f"{name}: {e}")
            keep.update(p for p in (stores / name).glob("*") if p.is_dir())
            keep.update(by_dataset.get(name, set()))
            skipped.append(f"the runs of dataset '{name}': its manifest cannot be read ({e})")  # so all are kept
            ctx = None
        if ctx is not None:
            keep.update(sk.store_path for sk in ctx.stages.values())
            keep.update(sk.legacy_path for sk in ctx.stages.values() if sk.legacy_path is not None)
            for stage in unresolved:  # unknown current key: keep every store of that stage
                keep.update(p for p in (stores / name).glob(f"{stage}-*"))
                keep.update(p for p in stores.glob(f"{stage}-*"))
        if ctx is None:
            keep.update(p for p in (runs / name).glob("*") if p.is_dir())
        else:
            keep.update(_current_runs(config, ctx))
    store_dirs = _store_dirs(stores)
    old_datasets = {p.parent.name for p in store_dirs if p.parent != stores}
    for what, names, held in (
            ("stores", (old_datasets | set(by_dataset)) - set(config.datasets),
             lambda d: [p for p in (stores / d).glob("*")] + sorted(by_dataset.get(d, set()))),
            ("runs", {d.name for d in runs.glob("*") if d.is_dir()} - set(config.datasets),
             lambda d: list((runs / d).glob("*")))):
        others = sorted(names)
        if others and not everything:
            skipped.append(f"the {what} of dataset(s) {', '.join(others)}: not in {config.path.name} "
                           "(`pipeline gc --all` removes them too)")
            keep.update(p for d in others for p in held(d))
    candidates = [p for p in store_dirs if p not in keep]
    candidates += [p for p in sorted(runs.glob("*/*")) if p.is_dir() and not p.name.startswith(".") and p not in keep]
    return candidates, skipped


def collect_garbage(config: PipelineConfig, dry_run: bool = False,
                    everything: bool = False) -> tuple[list[tuple[Path, int]], list[str]]:
    """Remove (or with dry_run only list) unreferenced stores and run directories; returns (path, bytes) of
    each and what was kept. What a running run produces or reads (its use lock) is kept, and so is what is
    being written (its writer or run lock)."""
    from filelock import FileLock, Timeout

    candidates, skipped = garbage(config, everything)
    removed = []
    for p in candidates:
        size = _size(p)
        with unused(config.cache, p) as free:
            if not free:
                skipped.append(f"{p}: in use by a running run")
                continue
            if dry_run:  # (taking the writer lock would need a writable cache)
                removed.append((p, size))
                continue
            is_run = p.parent.parent == cache_paths(config.cache)["runs"]
            lock = FileLock(str(run_lock_path(config.cache, p))) if is_run else store_lock(config.cache, p)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                skipped.append(f"{p}: being written by a running stage")
                continue
            try:
                shutil.rmtree(p)
            finally:
                lock.release()
        removed.append((p, size))
    return removed, skipped
