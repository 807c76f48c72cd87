"""One feature stage brought up to date for a dataset (`run_feature_stage`): reuse what is committed, repair damage, adopt
stores of older layouts, compute the rest in shards, and record the result in the dataset's index."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..cache import hash_key
from ..config import ExecutionParams, implementation
from ..context import Context, PipelineError, StageKeys, cache_paths, committed
from ..datasets import Clip
from ..events import RunEvents
from ..locks import acquire, in_use, store_lock
from ..store import FeatureStore, StoreError, StoreScan, StoreWriter, scan_store, write_failures_log
from .shards import ShardTask, _os_reason, run_shard, shard_size_for
from .stagekeys import _producer

log = logging.getLogger(__package__)  # the runner's one logger: its messages keep the name they always had


@dataclass
class StageReport:
    name: str
    store_path: Path
    total: int
    reused: int = 0
    computed: int = 0
    failed: int = 0
    shards_reused: int = 0
    shards_computed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    shared: int = 0  # clips whose input another clip has: its row, computed once
    retried: int = 0  # failed clips computed again (a failure that may not recur, or --retry-failed)
    failures_log: Path | None = None  # this dataset's failed items (the store's own failures.jsonl names rows)


def _write_index(ctx: Context, sk: StageKeys, report: StageReport) -> None:
    index = cache_paths(ctx.config.cache)["index"] / ctx.dataset
    pointer = index / f"{sk.name}.json"
    try:
        if report.computed == 0 and json.loads(pointer.read_text()).get("store_key") == sk.store_key:
            return  # a no-op leaves the index as it is (and works on a read-only cache)
    except (OSError, ValueError, AttributeError):
        pass
    index.mkdir(parents=True, exist_ok=True)
    tmp = index / f".tmp-{sk.name}-{os.getpid()}.json"
    tmp.write_text(json.dumps({"stage": sk.name, "store_key": sk.store_key, "store": str(sk.store_path),
                               "manifest": ctx.manifest_digest(), "clips": report.total,
                               "failed": report.failed, "completed": time.time()}, indent=2))
    os.replace(tmp, pointer)


def _repair(writer: StoreWriter, scan: StoreScan, name: str, notice: Callable[[str], None]) -> StoreScan:
    """Under the store lock: drop damaged shards, give format-1 records their digests and copied shards
    their new mtimes; the scan after."""
    if scan.damaged:
        n = len(scan.damaged)
        notice(f"recomputing {n} damaged shard{'s' if n != 1 else ''} of {name}: {scan.describe_damage()}")
        for sid in scan.damaged:
            writer.discard(sid)
    by_id = {r["shard"]: r for r in scan.records}
    if scan.legacy:
        broken = []
        for sid in scan.legacy:
            try:
                writer.adopt(by_id[sid])
            except (OSError, MemoryError) as e:
                if not isinstance(e, FileNotFoundError):
                    raise  # says nothing about the shard: stop rather than throw good data away
                broken.append(f"{sid} ({e})")
                writer.discard(sid)
            except Exception as e:  # a shard that cannot be read back as recorded is damage: recomputed
                broken.append(f"{sid} ({type(e).__name__}: {e})")
                writer.discard(sid)
        notice(f"{name}: recorded digests for {len(scan.legacy) - len(broken)} shard(s) committed before "
               f"store format 2" + (f"; recomputing {len(broken)} that do not read back: {', '.join(broken[:3])}"
                                    if broken else ""))
    for sid in scan.moved:
        writer.refresh(by_id[sid])
    if scan.moved:
        log.info("%s: recorded new mtimes of %d shard(s) whose files were copied (contents match their digests)",
                 name, len(scan.moved))
    return scan_store(writer.path, None) if scan.damaged or scan.legacy or scan.moved else scan


def run_feature_stage(ctx: Context, name: str, execution: ExecutionParams, events: RunEvents | None = None,
              executor: Any = None, retry_failed: bool = False) -> StageReport:
    """Bring one stage's store up to date for every clip of the manifest: compute what is missing,
    recompute what is damaged, and retry the failures that may not recur (every failure with `retry_failed`).
    A stage with nothing to do takes no lock and writes nothing."""
    sk = ctx.stages[name]
    assert ctx.manifest is not None
    t0 = time.perf_counter()
    events = events or RunEvents()
    total = len(ctx.manifest.clips)
    rows = ctx.rows[name]
    scan = scan_store(sk.store_path, rows)
    done, shards_reused, failures = committed(scan, rows)
    retry = _retries(ctx, name, failures, retry_failed)
    legacy = sk.legacy_path is not None and (sk.legacy_path / "commits").is_dir()  # a format-2 store to adopt
    complete = len(done - retry) == total and not scan.is_damaged and not legacy
    if complete and (scan.legacy or scan.moved):  # records to bring up to date, nothing to compute
        try:
            return _compute_stage(ctx, sk, execution, events, executor, t0, retry_failed)
        except OSError as e:
            log.info("%s: records not updated (%s); a read-only cache?", name, e)
    if complete:
        report = StageReport(name, sk.store_path, total, reused=total, shards_reused=shards_reused,
                             failed=len(failures), failures=failures,
                             failures_log=_write_dataset_failures(ctx, name, failures))
        events.plan(report, 0)
        try:
            _write_index(ctx, sk, report)
        except OSError as e:
            log.debug("index of %s not written: %s", name, e)
        report.seconds = time.perf_counter() - t0
        return report
    try:
        return _compute_stage(ctx, sk, execution, events, executor, t0, retry_failed)
    except StoreError as e:
        raise PipelineError(f"stage '{name}': {e}") from None
    except OSError as e:
        raise PipelineError(f"stage '{name}': {_os_reason(e)}; free space or fix permissions under "
                            f"{ctx.config.cache} (or use --cache elsewhere), then rerun to resume") from None


def _write_dataset_failures(ctx: Context, name: str, failures: list[dict[str, Any]]) -> Path:
    """This dataset's failed items of stage `name`, one JSON line each (item id, row key, reason, transient), next
    to its index entry: `CACHE/index/<dataset>/<stage>.failures.jsonl`."""
    path = cache_paths(ctx.config.cache)["index"] / ctx.dataset / f"{name}.failures.jsonl"
    text = "".join(json.dumps(f) + "\n" for f in failures)
    try:
        if path.read_text() == text:
            return path  # as it is (a no-op writes nothing)
    except OSError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache: the run summary still names every failed item
        log.debug("failures log of %s not written: %s", name, e)
    return path


def _adopt_legacy(ctx: Context, sk: StageKeys, writer: StoreWriter, notice: Callable[[str], None]) -> int:
    """Under the store lock: move the committed shards of this stage's store of this dataset from before rows were
    keyed by content (`stores/<dataset>/<stage>-<key>`) into the shared store, their clips renamed to row keys;
    nothing is recomputed. Damaged shards stay behind and are computed again. Returns the shards moved."""
    legacy = sk.legacy_path
    if legacy is None or legacy == sk.store_path or not (legacy / "commits").is_dir():
        return 0
    with contextlib.ExitStack() as held:
        lock = store_lock(ctx.config.cache, legacy)
        acquire(lock, f"stage '{sk.name}' (its old store)", None)
        held.callback(lock.release)
        old = scan_store(legacy, ctx.clip_keys)
        rows = ctx.rows[sk.name]
        rename = {ctx.clip_keys[cid]: rows[cid] for cid in ctx.clip_keys}
        ok, failed = scan_store(sk.store_path, rows).current(rows)
        have = {rows[cid] for cid in ok} | {rows[cid] for cid in failed}  # rows another dataset brought already
        moved = [rec for rec in old.records
                 if not {rename[e["key"]] for e in rec["clips"] + rec["failed"] if e["key"] in rename} <= have]
        for rec in moved:
            writer.take_shard(legacy, rec, rename)
        shutil.rmtree(legacy, ignore_errors=True)
        with contextlib.suppress(OSError):
            legacy.parent.rmdir()  # the dataset's folder of old stores, once its last one moved
    if old.records:
        notice(f"{sk.name}: moved {len(moved)} shard(s) of dataset '{ctx.dataset}''s store {legacy.name} into "
               f"the shared store {sk.store_path.name} (rows keyed by content; {len(old.records) - len(moved)} held "
               "only rows it had already); nothing recomputed")
    return len(moved)


def _retries(ctx: Context, name: str, failures: list[dict[str, Any]], retry_failed: bool) -> set[str]:
    """The failed clips a run computes again: all with `retry_failed`; else those whose failure may not recur
    (a crash, a hang, an I/O error), and those whose upstream clip failed but is computed now."""
    from ..media.common import is_transient

    if retry_failed:
        return {f["id"] for f in failures}
    out = {f["id"] for f in failures if f.get("transient", is_transient(f["reason"]))}
    waiting = [f["id"] for f in failures if f["reason"].startswith("upstream failed") and f["id"] not in out]
    producer = _producer(ctx.config, name)
    if waiting and producer in ctx.stages:
        ok, _ = scan_store(ctx.stages[producer].store_path, ctx.rows[producer]).current(ctx.rows[producer])
        out.update(c for c in waiting if c in ok)
    return out


def _compute_stage(ctx: Context, sk: StageKeys, execution: ExecutionParams, events: RunEvents, executor: Any,
                   t0: float, retry_failed: bool = False) -> StageReport:
    assert ctx.manifest is not None
    name = sk.name
    sk.store_path.parent.mkdir(parents=True, exist_ok=True)
    lock = store_lock(ctx.config.cache, sk.store_path)
    producer = _producer(ctx.config, name)
    with contextlib.ExitStack() as held:
        acquire(lock, f"stage '{name}'", events.wait)
        held.callback(lock.release)
        if producer:
            held.enter_context(in_use(ctx.config.cache, ctx.stages[producer].store_path))
        rows = ctx.rows[name]
        scan = scan_store(sk.store_path, rows)  # again: another run may have worked meanwhile
        if scan.attrs_problem:
            events.notice(f"{name}: {scan.attrs_problem}; rewriting it from the stage's definition")
        writer = StoreWriter(sk.store_path, sk.attrs, ctx.config.backend)
        writer.clean_temporaries()
        if _adopt_legacy(ctx, sk, writer, events.notice):
            scan = scan_store(sk.store_path, rows)
        scan = _repair(writer, scan, name, events.notice)
        done, shards_reused, failures = committed(scan, rows)
        retry = _retries(ctx, name, failures, retry_failed)
        done -= retry
        todo = [c for c in ctx.manifest.clips if c.clip_id not in done]
        compute: dict[str, Clip] = {}  # row key -> the first clip that reads it: each row computed once
        for c in todo:
            compute.setdefault(rows[c.clip_id], c)
        report = StageReport(name, sk.store_path, total=len(ctx.manifest.clips), reused=len(done),
                             shards_reused=shards_reused, shared=len(todo) - len(compute), retried=len(retry))
        upstream = None
        if producer:
            upstream = FeatureStore(ctx.stages[producer].store_path, clip_keys=ctx.rows[producer])
        size = execution.shard_size or shard_size_for(len(compute), execution.workers, sk.attrs)
        tasks = []
        pending = list(compute.items())
        for s in range(0, len(pending), size):
            keys = [k for k, _ in pending[s:s + size]]
            chunk = [c for _, c in pending[s:s + size]]
            tasks.append(ShardTask(
                shard_id=hash_key([sk.store_key, keys]), store_path=str(sk.store_path),
                implementation=sk.implementation, params=sk.params, execution=dataclasses.asdict(execution),
                cache_key=sk.store_key, clips=chunk, clip_keys=keys,
                upstream=upstream.subset(c.clip_id for c in chunk) if upstream is not None else None,
                upstream_attrs=upstream.attrs if upstream is not None else None))
        if compute:
            impl = implementation(sk.implementation)
            if hasattr(impl, "expected_size"):  # big image maps: say how much disk this run will take before it starts
                events.notice(f"{name}: {impl(impl.Config(**sk.params)).expected_size(len(compute))} to write "
                              f"(one row per picture: {len(todo) - len(compute):,} more item(s) read a row computed "
                              "here)")
        events.plan(report, len(compute))

        def collect(result: dict[str, Any]) -> None:
            report.computed += result["ok"]
            report.failed += len(result["failed"])
            report.shards_computed += 1
            events.progress(result["ok"] + len(result["failed"]))

        from ..executors import Executor

        if executor is None:
            with Executor() as own:
                own.run(run_shard, tasks, execution, collect)
        else:
            executor.run(run_shard, tasks, execution, collect)
        scan = scan_store(sk.store_path, rows)
        write_failures_log(sk.store_path, scan)
        report.failures = committed(scan, rows)[2]
        report.failed = len(report.failures)
        report.failures_log = _write_dataset_failures(ctx, name, report.failures)
        failed_now = {f["id"] for f in report.failures}
        report.computed = sum(c.clip_id not in failed_now for c in todo)  # items, not rows: whose row this run committed
        _write_index(ctx, sk, report)
    report.seconds = time.perf_counter() - t0
    return report
