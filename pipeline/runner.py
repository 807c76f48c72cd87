"""Run stages of the DAG for a dataset: resolve keys, reuse what is committed, compute the rest in shards."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cache import DigestMemo, hash_key
from .config import ConfigError, ExecutionParams, PipelineConfig, implementation, key_params, load_config
from .datasets import Clip, DatasetAdapter, DatasetError, Manifest
from .registry import DATASETS, TRAINERS
from .context import Context, PipelineError, StageKeys, cache_paths, committed
from .locks import acquire, in_use, run_lock_path, store_lock, unused
from .store import (ClipResult, FeatureStore, StoreError, StoreScan, StoreWriter, repair_command, scan_store,
                    write_failures_log)

from .plan import Plan, make_plan, reads_from_dataset
from .training import TrainError, is_run_stage, resolve_runs, run_status
from .training import run_stage as run_run_stage

log = logging.getLogger(__name__)

_EXTRACTOR_CACHE: dict[str, Any] = {}  # one model per worker process, keyed by stage key


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


def make_adapter(config: PipelineConfig, dataset: str | None) -> DatasetAdapter:
    """Instantiate the dataset adapter named in stages.yaml."""
    spec = config.dataset(dataset)
    cls = DATASETS.get(spec.adapter)
    adapter = cls(spec.name, spec.root, cls.Config(**spec.params))
    if hasattr(adapter, "bind_config"):  # an adapter made of other datasets (`mix`)
        adapter.bind_config(config)
    return adapter


def resolve(config: PipelineConfig, dataset: str | None, prepare: bool = False,
            need_manifest: bool = True, only: list[str] | None = None,
            errors: dict[str, str] | None = None, manifest: Manifest | None = None,
            execution: dict[str, Any] | None = None, exact: bool = False) -> Context:
    """Compute store keys for `dataset` (the `only` stages and their upstream, else all) and the
    manifest's clip keys. With `errors`, a stage whose key cannot be computed (e.g. its weights are
    missing) is recorded there, with everything downstream of it, instead of raising. `manifest`:
    one already read for this dataset (after prepare), not read again. `execution`: the run's execution
    overrides (its media backend enters the key of the stages that decode media). `exact`: the `only` stages
    and none upstream of them (a plan's stages: what they read is among them)."""
    adapter = make_adapter(config, dataset)
    clip_keys: dict[str, str] = {}
    if not need_manifest:
        manifest = None
    elif manifest is None:
        if prepare:
            adapter.prepare()
        manifest = adapter.manifest()
    if manifest is not None:
        clip_keys = manifest.clip_keys(DigestMemo(cache_paths(config.cache)["digests"]))
    stages: dict[str, StageKeys] = {}
    from extractors.weights import WeightsError

    for name in config.order(only):
        if exact and only is not None and name not in only:
            continue
        spec = config.stages[name]
        impl = implementation(spec.implementation)
        if not hasattr(impl, "output_spec"):
            continue  # trainers resolve their own keys
        if errors is not None and any(u in errors for u in spec.upstream):
            errors[name] = "an upstream stage cannot be resolved"
            continue
        if reads_from_dataset(impl) not in (None, adapter.kind):
            continue  # e.g. an import stage on a media dataset: it does not apply (run() says so if asked)
        if any(u not in stages for u in spec.upstream):
            continue
        params = config.params_for(name, adapter.dataset_name)
        ex = impl(impl.Config(**params), config.execution_for(name, adapter.dataset_name, **(execution or {})))
        ex.allow_download = prepare  # only a run fetches weights; status and gc never do
        up_attrs = _producer_attrs(config, stages, name)
        if reads_from_dataset(impl) == "features":
            up_attrs = {"source": adapter.feature_spec()}
        try:
            out = ex.output_spec(up_attrs)
            weights = ex.weights_digest()
        except WeightsError as e:
            if errors is None:
                raise
            errors[name] = str(e)
            continue
        identity = {
            "implementation": spec.implementation, "version": impl.VERSION, "params": key_params(impl.Config, params),
            "weights": weights, "upstream": [stages[u].store_key for u in spec.upstream],
            "dataset": adapter.dataset_name, "backend": config.backend}
        media = ex.execution.media_backend if reads_from_dataset(impl) == "media" else None
        if media not in (None, "ffmpeg"):  # stores decoded by the ffmpeg programs (the first backend) keep their keys
            identity["media"] = media
        store_key = hash_key(identity)
        attrs = {
            **out.extra,  # the extractor's own metadata first: the reserved keys below win
            "key": store_key, "stage": name, "group": spec.group, "dataset": adapter.dataset_name,
            "extractor": spec.implementation, "version": impl.VERSION, "params": params,
            "weights": weights, "upstream": {u: stages[u].store_key for u in spec.upstream},
            "modality": ex.modality, "kind": out.kind, "dims": None if out.dims is None else list(out.dims),
            "dtype": out.dtype, "frame_rate": out.frame_rate, **({"media_backend": media} if media else {}),
            "how_to_read": "CSR: each clip is rows [start:stop) of its shard's `data`; "
                           "rows are frames at `frame_rate` per second; pipeline.open_store(path)[clip_id]",
        }
        stages[name] = StageKeys(name, spec.implementation, params, store_key,
                                 cache_paths(config.cache)["stores"] / adapter.dataset_name / f"{name}-{store_key}",
                                 list(spec.upstream), attrs)
    return Context(config, adapter.dataset_name, adapter, manifest, clip_keys, stages)


def _producer_attrs(config: PipelineConfig, stages: dict[str, StageKeys], name: str) -> dict[str, Any] | None:
    producer = _producer(config, name)
    return stages[producer].attrs if producer else None


def _producer(config: PipelineConfig, name: str) -> str | None:
    spec = config.stages[name]
    consumes = getattr(implementation(spec.implementation), "consumes", None)
    for u in spec.upstream:
        if consumes and getattr(implementation(config.stages[u].implementation), "produces", None) == consumes:
            return u
    return None


MIN_SHARD, MAX_SHARD = 8, 256
SHARD_BYTES = 256 << 20  # what one shard's outputs may hold in a worker's memory before they are written
_TYPICAL_CLIP_S = 10.0  # VEGAS and AudioSet clips: the length a shard's bytes are estimated for


def shard_size_for(clips: int, workers: int, attrs: dict[str, Any] | None = None) -> int:
    """Clips per shard when stages.yaml does not say: about four shards per worker (every worker busy,
    progress and resume in steps), between 8 and 256 clips, so a 28k-clip store is ~110 shards, not 3500;
    fewer when a clip's output is big (`attrs`: dims, dtype, frame_rate), so a shard stays near 256 MiB."""
    import numpy as np

    size = min(MAX_SHARD, max(MIN_SHARD, -(-clips // (4 * max(1, workers)))))
    if attrs and attrs.get("dims") is not None and attrs.get("dtype"):
        rows = (attrs.get("frame_rate") or 0) * _TYPICAL_CLIP_S or 1
        clip_bytes = rows * int(np.prod(attrs["dims"] or [1])) * np.dtype(attrs["dtype"]).itemsize
        size = max(1, min(size, int(SHARD_BYTES // max(1, clip_bytes))))
    return size


@dataclass
class ShardTask:
    """A unit of work: compute and commit one shard of clips into one store."""

    shard_id: str
    store_path: str
    implementation: str
    params: dict[str, Any]
    execution: dict[str, Any]
    cache_key: str
    clips: list[Clip]
    clip_keys: list[str]
    upstream: FeatureStore | None
    upstream_attrs: dict[str, Any] | None


def _extractor(task: ShardTask) -> Any:
    key = hash_key([task.cache_key, task.execution])  # a new device or batch size builds a new model
    ex = _EXTRACTOR_CACHE.get(key)
    if ex is None:
        impl = implementation(task.implementation)
        ex = impl(impl.Config(**task.params), ExecutionParams(**task.execution))
        _EXTRACTOR_CACHE[key] = ex
    return ex


_DECODE_POOLS: dict[int, ThreadPoolExecutor] = {}
_PREFETCHED: dict[str, list[Any]] = {}  # shard id -> its clips' loads, started while the shard before computed


def _load(ex: Any, clip: Clip, upstream: Any) -> tuple[Any, str | None]:
    from .media import MediaError

    try:
        return ex.load(clip, upstream), None
    except MediaError as e:
        return None, e.reason
    except DatasetError as e:  # the clip lacks what the stage reads (a caption's picture has no sound: a `mix`)
        return None, str(e)


def _start_loads(task: ShardTask) -> list[Any]:
    """Hand every clip of `task` to this process's decode threads (each decodes in its decoder process)."""
    ex = _extractor(task)
    threads = max(1, task.execution.get("decode_threads", 2))
    if threads not in _DECODE_POOLS:
        _DECODE_POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
    return [_DECODE_POOLS[threads].submit(_load, ex, clip, task.upstream) for clip in task.clips]


def run_shard(task: ShardTask, following: ShardTask | None = None) -> dict[str, Any]:
    """Decode (threads), compute (batched), write and commit one shard; return its summary. With
    `following` (the shard this process runs next), its clips start decoding while this one computes:
    only for stages that decode media, whose loads hold nothing that `release()` closes between shards."""
    import extractors  # noqa: F401  (registers extractors in a fresh worker)

    ex = _extractor(task)
    futures = _PREFETCHED.pop(task.shard_id, None) or _start_loads(task)
    _PREFETCHED.clear()  # a shard prefetched for a run that then failed: not kept
    if following is not None and reads_from_dataset(implementation(following.implementation)) == "media":
        _PREFETCHED[following.shard_id] = _start_loads(following)
    batch = max(1, task.execution.get("batch_size", 32))
    loaded: list[tuple[Any, str | None]] = []
    outputs: dict[int, Any] = {}
    pending: list[int] = []  # loaded clips waiting for a full batch

    def compute(idx: list[int]) -> None:
        for i, out in zip(idx, ex.compute([loaded[i][0] for i in idx], task.upstream_attrs)):
            outputs[i] = out

    try:
        # every clip went to the decode threads at once: while the model runs on one batch, the threads
        # (and their decoder processes) decode the next, and, one worker at a time, the next shard's
        for i, future in enumerate(futures):
            loaded.append(future.result())
            if loaded[i][0] is not None:
                pending.append(i)
            if len(pending) == batch:
                compute(pending)
                pending = []
        if pending:
            compute(pending)
    finally:
        for future in futures:  # on an error: nothing of this shard left decoding
            future.cancel()
        if not _PREFETCHED:
            ex.release()
    reasons = {i: why for i, (_, why) in enumerate(loaded)}
    writer = StoreWriter(task.store_path)
    for i, out in list(outputs.items()):  # a clip unlike the others fails alone, not the shard
        why = writer.mismatch(out) or (ex.no_rows_reason(loaded[i][0], task.upstream_attrs) if len(out) == 0 else None)
        if why:
            reasons[i] = why
            del outputs[i]
    results = [ClipResult(c.clip_id, k, outputs.get(i), None if i in outputs else reasons[i])
               for i, (c, k) in enumerate(zip(task.clips, task.clip_keys))]
    try:
        record = writer.write_shard(task.shard_id, results)
    except OSError as e:
        raise StoreError(f"cannot write shard {task.shard_id} to {task.store_path}: {_os_reason(e)}; free space or "
                         "use another cache (--cache), then rerun to resume") from None
    return {"shard": task.shard_id, "ok": len(record["clips"]), "failed": record["failed"]}


def _os_reason(e: OSError) -> str:
    """An OSError in words, disk full said plainly."""
    import errno

    what = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = f"the disk is full ({what})"
    return f"{what}{f' ({e.filename})' if e.filename else ''}"


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


def run_stage(ctx: Context, name: str, execution: ExecutionParams,
              on_progress: Callable[[int], None] | None = None,
              on_wait: Callable[[str], None] | None = None,
              on_plan: Callable[[StageReport, int], None] | None = None,
              executor: Any = None, on_notice: Callable[[str], None] | None = None,
              retry_failed: bool = False) -> StageReport:
    """Bring one stage's store up to date for every clip of the manifest: compute what is missing,
    recompute what is damaged, and retry the failures that may not recur (every failure with `retry_failed`).
    A stage with nothing to do takes no lock and writes nothing."""
    sk = ctx.stages[name]
    assert ctx.manifest is not None
    t0 = time.perf_counter()
    notice = on_notice or (lambda m: log.warning("%s", m))
    total = len(ctx.manifest.clips)
    scan = scan_store(sk.store_path, ctx.clip_keys)
    done, shards_reused, failures = committed(scan, ctx.clip_keys)
    retry = _retries(ctx, name, failures, retry_failed)
    complete = len(done - retry) == total and not scan.is_damaged
    if complete and (scan.legacy or scan.moved):  # records to bring up to date, nothing to compute
        try:
            return _compute_stage(ctx, sk, execution, on_progress, on_wait, on_plan, executor, notice, t0, retry_failed)
        except OSError as e:
            log.info("%s: records not updated (%s); a read-only cache?", name, e)
    if complete:
        report = StageReport(name, sk.store_path, total, reused=total, shards_reused=shards_reused,
                             failed=len(failures), failures=failures)
        if on_plan:
            on_plan(report, 0)
        try:
            _write_index(ctx, sk, report)
        except OSError as e:
            log.debug("index of %s not written: %s", name, e)
        report.seconds = time.perf_counter() - t0
        return report
    try:
        return _compute_stage(ctx, sk, execution, on_progress, on_wait, on_plan, executor, notice, t0, retry_failed)
    except StoreError as e:
        raise PipelineError(f"stage '{name}': {e}") from None
    except OSError as e:
        raise PipelineError(f"stage '{name}': {_os_reason(e)}; free space or fix permissions under "
                            f"{ctx.config.cache} (or use --cache elsewhere), then rerun to resume") from None


def _retries(ctx: Context, name: str, failures: list[dict[str, Any]], retry_failed: bool) -> set[str]:
    """The failed clips a run computes again: all with `retry_failed`; else those whose failure may not recur
    (a crash, a hang, an I/O error), and those whose upstream clip failed but is computed now."""
    from .media.common import is_transient

    if retry_failed:
        return {f["id"] for f in failures}
    out = {f["id"] for f in failures if f.get("transient", is_transient(f["reason"]))}
    waiting = [f["id"] for f in failures if f["reason"].startswith("upstream failed") and f["id"] not in out]
    producer = _producer(ctx.config, name)
    if waiting and producer in ctx.stages:
        ok, _ = scan_store(ctx.stages[producer].store_path, ctx.clip_keys).current(ctx.clip_keys)
        out.update(c for c in waiting if c in ok)
    return out


def _compute_stage(ctx: Context, sk: StageKeys, execution: ExecutionParams, on_progress: Any, on_wait: Any,
                   on_plan: Any, executor: Any, notice: Callable[[str], None], t0: float,
                   retry_failed: bool = False) -> StageReport:
    assert ctx.manifest is not None
    name = sk.name
    sk.store_path.parent.mkdir(parents=True, exist_ok=True)
    lock = store_lock(ctx.config.cache, sk.store_path)
    producer = _producer(ctx.config, name)
    with contextlib.ExitStack() as held:
        acquire(lock, f"stage '{name}'", on_wait)
        held.callback(lock.release)
        if producer:
            held.enter_context(in_use(ctx.config.cache, ctx.stages[producer].store_path))
        scan = scan_store(sk.store_path, ctx.clip_keys)  # again: another run may have worked meanwhile
        if scan.attrs_problem:
            notice(f"{name}: {scan.attrs_problem}; rewriting it from the stage's definition")
        writer = StoreWriter(sk.store_path, sk.attrs, ctx.config.backend)
        writer.clean_temporaries()
        scan = _repair(writer, scan, name, notice)
        done, shards_reused, failures = committed(scan, ctx.clip_keys)
        retry = _retries(ctx, name, failures, retry_failed)
        done -= retry
        todo = [c for c in ctx.manifest.clips if c.clip_id not in done]
        compute, copies = _shared_inputs(ctx, sk, todo, scan, retry)
        report = StageReport(name, sk.store_path, total=len(ctx.manifest.clips), reused=len(done),
                             shards_reused=shards_reused, shared=len(copies), retried=len(retry))
        upstream = None
        if producer:
            upstream = FeatureStore(ctx.stages[producer].store_path, clip_keys=ctx.clip_keys)
        size = execution.shard_size or shard_size_for(len(compute), execution.workers, sk.attrs)
        tasks = []
        for s in range(0, len(compute), size):
            chunk = compute[s:s + size]
            keys = [ctx.clip_keys[c.clip_id] for c in chunk]
            tasks.append(ShardTask(
                shard_id=hash_key([sk.store_key, keys]), store_path=str(sk.store_path),
                implementation=sk.implementation, params=sk.params, execution=dataclasses.asdict(execution),
                cache_key=sk.store_key, clips=chunk, clip_keys=keys,
                upstream=upstream.subset(c.clip_id for c in chunk) if upstream is not None else None,
                upstream_attrs=upstream.attrs if upstream is not None else None))
        if todo:
            impl = implementation(sk.implementation)
            if hasattr(impl, "expected_size"):  # big image maps: say how much disk this run will take before it starts
                notice(f"{name}: {impl(impl.Config(**sk.params)).expected_size(len(todo))} to write "
                       f"({len(copies):,} of them copies of a shared picture's row)")
        if on_plan:
            on_plan(report, len(todo))

        def collect(result: dict[str, Any]) -> None:
            report.computed += result["ok"]
            report.failed += len(result["failed"])
            report.shards_computed += 1
            if on_progress:
                on_progress(result["ok"] + len(result["failed"]))

        from .executors import Executor

        if executor is None:
            with Executor() as own:
                own.run(run_shard, tasks, execution, collect)
        else:
            executor.run(run_shard, tasks, execution, collect)
        if copies:
            _commit_copies(ctx, sk, writer, [c for c in todo if c.clip_id in copies], copies, size, collect)
        scan = scan_store(sk.store_path, ctx.clip_keys)
        write_failures_log(sk.store_path, scan)
        report.failures = committed(scan, ctx.clip_keys)[2]
        report.failed = len(report.failures)
        _write_index(ctx, sk, report)
    report.seconds = time.perf_counter() - t0
    return report


def _shared_inputs(ctx: Context, sk: StageKeys, todo: list[Clip], scan: StoreScan,
                   retry: set[str] = frozenset()) -> tuple[list[Clip], dict[str, str]]:  # type: ignore[assignment]
    """The clips to compute, and for each clip whose extractor input another clip already has (the picture of
    five spoken captions), the clip whose row it takes: each input is computed once per store."""
    impl = implementation(sk.implementation)
    if getattr(impl, "input_key", None) is None or not todo:
        return todo, {}
    ex = impl(impl.Config(**sk.params))
    memo = DigestMemo(cache_paths(ctx.config.cache)["digests"])
    by_id = ctx.manifest.by_id() if ctx.manifest is not None else {}
    source: dict[str, str] = {}
    ok, failed = scan.current(ctx.clip_keys)
    for cid in [c for c in ctx.clip_keys if (c in ok or c in failed) and c not in retry]:
        key = ex.input_key(by_id[cid], memo)
        if key is not None:
            source.setdefault(key, cid)
    compute, copies = [], {}
    for c in todo:
        key = ex.input_key(c, memo)
        if key is None:
            compute.append(c)
        elif key in source:
            copies[c.clip_id] = source[key]
        else:
            source[key] = c.clip_id
            compute.append(c)
    return compute, copies


def _commit_copies(ctx: Context, sk: StageKeys, writer: StoreWriter, clips: list[Clip], copies: dict[str, str],
                   size: int, collect: Callable[[dict[str, Any]], None]) -> None:
    """Commit the clips that share their input with a computed clip: its row (or its failure), in shards."""
    store = FeatureStore(sk.store_path, clip_keys=ctx.clip_keys)
    for s in range(0, len(clips), size):
        results = []
        for c in clips[s:s + size]:
            src = copies[c.clip_id]
            if src in store:
                results.append(ClipResult(c.clip_id, ctx.clip_keys[c.clip_id], store[src]))
            elif src in store.failures:
                results.append(ClipResult(c.clip_id, ctx.clip_keys[c.clip_id], None, store.failures[src]))
        if results:  # (a source that did not commit leaves its copies to the next run)
            keys = [r.key for r in results]
            record = writer.write_shard(hash_key([sk.store_key, keys]), results)
            collect({"shard": record["shard"], "ok": len(record["clips"]), "failed": record["failed"]})


def status(config: PipelineConfig, dataset: str | None, everything: bool = False) -> list[dict[str, Any]]:
    """Per stage the plan runs for the dataset: up to date / missing / partial N of M clips / stale, like
    `dvc status`; `everything`: the stages left out too, each with its reason."""
    from .media.common import is_transient

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
        scan = scan_store(sk.store_path, ctx.clip_keys)
        done, _, failures = committed(scan, ctx.clip_keys)
        total = len(ctx.manifest.clips)
        pointer = index / f"{name}.json"
        try:
            last = json.loads(pointer.read_text())
        except (OSError, ValueError):
            last = None
        if scan.is_damaged:
            n = len(scan.damaged)
            state = (f"damaged {n} shard{'s' if n != 1 else ''}" if n else "damaged") + \
                f": {scan.describe_damage()}; run {repair_command(sk.attrs, sk.store_path)} to repair it"
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


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_cache(config: PipelineConfig) -> list[dict[str, Any]]:
    """Every store (and run) in the cache with its size, clip count and what produced it."""
    out = []
    stores = cache_paths(config.cache)["stores"]
    for path in sorted(p.parent for p in stores.glob("*/*/commits")):
        scan = scan_store(path)
        attrs = scan.attrs or {}
        n = sum(len(r["clips"]) for r in scan.records)
        out.append({"kind": "store", "path": str(path), "dataset": attrs.get("dataset", path.parent.name),
                    "stage": attrs.get("stage", path.name.rsplit("-", 1)[0]), "extractor": attrs.get("extractor"),
                    "params": attrs.get("params"), "clips": n, "bytes": _size(path),
                    "damaged": scan.describe_damage() if scan.is_damaged else None})
    runs = cache_paths(config.cache)["runs"]
    for params_path in sorted(runs.glob("*/*/params.yaml")):
        out.append({"kind": "run", "path": str(params_path.parent), "bytes": _size(params_path.parent)})
    return out


def _current_runs(config: PipelineConfig, name: str, skipped: list[str]) -> set[Path] | None:
    """Run directories of dataset `name` that a current key references (None: the dataset cannot be read,
    so none of its runs can be judged)."""
    run_stages = [n for n in config.stages if is_run_stage(implementation(config.stages[n].implementation))]
    if not run_stages:
        return set()
    try:
        plan = make_plan(config, make_adapter(config, name), prepare=False)
        ctx = resolve(config, name, errors={}, manifest=plan.manifest)
        assert ctx.manifest is not None
    except Exception as e:  # no data here (a corpus not downloaded): keep its runs
        skipped.append(f"the runs of dataset '{name}': its manifest cannot be read ({e})")
        return None
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
    left alone. Those of datasets stages.yaml does not name are left alone unless `everything`."""
    keep: set[Path] = set()
    skipped: list[str] = []
    stores, runs = cache_paths(config.cache)["stores"], cache_paths(config.cache)["runs"]
    for name in config.datasets:
        unresolved: dict[str, str] = {}
        try:
            ctx = resolve(config, name, need_manifest=False, errors=unresolved)
        except Exception as e:  # a dataset we cannot resolve keeps all its stores
            skipped.append(f"{name}: {e}")
            keep.update(p for p in (stores / name).glob("*") if p.is_dir())
            ctx = None
        if ctx is not None:
            keep.update(sk.store_path for sk in ctx.stages.values())
            for stage in unresolved:  # unknown current key: keep every store of that stage
                keep.update(p for p in (stores / name).glob(f"{stage}-*"))
        current = _current_runs(config, name, skipped)
        if current is None:
            current = {p for p in (runs / name).glob("*") if p.is_dir()}
        keep.update(current)
    for root, what in ((stores, "stores"), (runs, "runs")):
        others = sorted(d.name for d in root.glob("*") if d.is_dir() and d.name not in config.datasets)
        if others and not everything:
            skipped.append(f"the {what} of dataset(s) {', '.join(others)}: not in {config.path.name} "
                           "(`pipeline gc --all` removes them too)")
            keep.update(p for d in others for p in (root / d).glob("*"))
    candidates = [p for root in (stores, runs) for p in sorted(root.glob("*/*"))
                  if p.is_dir() and not p.name.startswith(".") and p not in keep]
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


def _model_contexts(cfg: PipelineConfig, plan: Plan) -> dict[str, Context]:
    """The contexts of the datasets whose trained models the plan's evaluate stages apply to its dataset."""
    wanted: dict[str, list[str]] = {}
    for n, other in plan.foreign.items():
        wanted.setdefault(other, []).extend(u for u in cfg.stages[n].upstream
                                            if is_run_stage(implementation(cfg.stages[u].implementation)))
    return {d: resolve(cfg, d, only=ups) for d, ups in wanted.items()}


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
        cache: str | os.PathLike | None = None, strict: bool = False,
        on_progress: Callable[[int], None] | None = None, on_wait: Callable[[str], None] | None = None,
        on_plan: Callable[[StageReport, int], None] | None = None,
        on_skip: Callable[[str, str], None] | None = None,
        on_epoch: Callable[[str, int, int, str, float], None] | None = None,
        on_notice: Callable[[str], None] | None = None, retry_failed: bool = False,
        **execution: Any) -> list[Any]:
    """Run a group (or one stage) and everything upstream for a dataset; return a report per stage
    (a StageReport per feature stage, a pipeline.training.RunReport per train/evaluate stage). `on_notice`
    hears what the run found and did on the way (damaged shards recomputed, dataset entries skipped).
    Failed clips whose failure may not recur are retried; `retry_failed`: every failed clip."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, overrides, cache)
    adapter = make_adapter(cfg, dataset)
    plan = make_plan(cfg, adapter, group, stage)
    names = plan.selected
    _check_devices([cfg.execution_for(n, plan.dataset, **execution).device for n in names])
    for n, p in plan.stages.items():  # the group's stages that do not apply, said once (not every other stage)
        if not p.runs and n in plan.why_not and stage is None and cfg.stages[n].group == group:
            (on_skip or (lambda n, why: log.info("stage '%s' skipped: %s", n, why)))(n, plan.why_not[n])
    _check_media_backends({cfg.execution_for(n, plan.dataset, **execution).media_backend for n in names
                           if reads_from_dataset(implementation(cfg.stages[n].implementation)) == "media"})
    ctx = resolve(cfg, dataset, prepare=True, only=names, exact=True, manifest=plan.manifest, execution=execution)
    if ctx.manifest is not None and ctx.manifest.skipped:
        shown = "; ".join(f"{p} ({why})" for p, why in ctx.manifest.skipped[:5])
        more = len(ctx.manifest.skipped) - 5
        (on_notice or log.warning)(f"dataset '{ctx.dataset}': skipped {len(ctx.manifest.skipped)} "
                                   f"entr{'y' if len(ctx.manifest.skipped) == 1 else 'ies'} that are not media "
                                   f"files: {shown}{f'; and {more} more' if more > 0 else ''}")
    from .executors import Executor

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
                    reports.append(run_run_stage(ctx, runs[name], runs, ex.device, on_wait, on_epoch))
                except TrainError as e:
                    raise PipelineError(str(e)) from None
                continue
            if name not in ctx.stages:
                raise PipelineError(f"stage '{name}' cannot run on dataset '{ctx.dataset}' (an upstream stage "
                                    "does not apply to it)")
            rep = run_stage(ctx, name, ex, on_progress, on_wait, on_plan, executor, on_notice, retry_failed)
            reports.append(rep)
            if strict and rep.failed:
                raise PipelineError(f"stage '{name}': {rep.failed} clip(s) failed and --strict is set; "
                                    f"see {rep.store_path / 'failures.jsonl'}")
    return reports


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
            done, _, _ = committed(scan_store(sk.store_path, ctx.clip_keys), ctx.clip_keys)
            todo = [c for c in ctx.manifest.clips if c.clip_id not in done]
            size, guessed = _row_estimate(sk.attrs, todo)
            row.update(action="compute" if todo else "reuse", clips=len(todo), bytes=size, estimated=guessed,
                       total=len(ctx.manifest.clips), store=str(sk.store_path))
        elif name in runs:
            rk = runs[name]
            done = (rk.run_dir / "metrics.json").exists()
            row.update(action="reuse" if done else ("train" if rk.kind == "train" else "evaluate"), store=str(rk.run_dir))
        rows.append(row)
    return rows
