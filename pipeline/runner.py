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
from .config import ExecutionParams, PipelineConfig, implementation, key_params, load_config
from .datasets import Clip, DatasetAdapter, DatasetError, Manifest
from .registry import DATASETS
from .context import Context, PipelineError, StageKeys, cache_paths, committed
from .locks import acquire, in_use, run_lock_path, store_lock, unused
from .store import (ATTRS_FILE, ClipResult, FeatureStore, StoreError, StoreScan, StoreWriter, repair_command,
                    scan_store, write_failures_log)

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
    failures_log: Path | None = None  # this dataset's failed items (the store's own failures.jsonl names rows)


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
    digests: dict[str, dict[str, str]] = {}
    if not need_manifest:
        manifest = None
    elif manifest is None:
        if prepare:
            adapter.prepare()
        manifest = adapter.manifest()
    if manifest is not None:
        digests, clip_keys = _content_keys(config, manifest)
    stages: dict[str, StageKeys] = {}
    rows: dict[str, dict[str, str]] = {}
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
            "weights": weights, "upstream": [stages[u].view_key for u in spec.upstream],
            "dataset": adapter.dataset_name, "backend": config.backend}
        media = ex.execution.media_backend if reads_from_dataset(impl) == "media" else None
        if media not in (None, "ffmpeg"):  # stores decoded by the ffmpeg programs (the first backend) keep their keys
            identity["media"] = media
        # the view key: the stage's content for this dataset (the key stores had before rows were keyed by content,
        # so run keys and caches made then carry over); the store key: the extractor's identity alone, so every
        # dataset over the same files reads one store. A stage that reads a features dataset's own files keeps it.
        view_key = hash_key(identity)
        shared = {**identity, "upstream": [stages[u].store_key for u in spec.upstream], "rows": "content"}
        if reads_from_dataset(impl) != "features":
            del shared["dataset"]
        store_key = hash_key(shared)
        if manifest is not None:
            rows[name] = _row_keys(config, name, impl, manifest, digests, clip_keys, rows)
        attrs = {
            **out.extra,  # the extractor's own metadata first: the reserved keys below win
            "key": store_key, "stage": name, "group": spec.group,
            "extractor": spec.implementation, "version": impl.VERSION, "params": params,
            "weights": weights, "upstream": {u: stages[u].store_key for u in spec.upstream},
            "modality": ex.modality, "kind": out.kind, "dims": None if out.dims is None else list(out.dims),
            "dtype": out.dtype, "frame_rate": out.frame_rate, **({"media_backend": media} if media else {}),
            "how_to_read": "CSR: each row key's rows are [start:stop) of its shard's `data`; rows are frames at "
                           "`frame_rate` per second; a row key is the content the extractor read (a file's digest "
                           "and segment); pipeline.open_store(dataset=, stage=)[clip_id] maps a dataset's items",
        }
        stores = cache_paths(config.cache)["stores"]
        stages[name] = StageKeys(name, spec.implementation, params, store_key, stores / f"{name}-{store_key}",
                                 list(spec.upstream), attrs, view_key, stores / adapter.dataset_name / f"{name}-{view_key}")
    return Context(config, adapter.dataset_name, adapter, manifest, clip_keys, stages, rows)


def _content_keys(config: PipelineConfig, manifest: Manifest) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The manifest's media digests (clip id -> role -> digest, memoized in the cache) and its clip keys."""
    digests = manifest.media_digests(DigestMemo(cache_paths(config.cache)["digests"]))
    return digests, manifest.clip_keys(digests=digests)


def item_rows(config: PipelineConfig, dataset: str | None, stage: str) -> dict[str, str]:
    """Item id -> the row key it reads in stage `stage`'s stores, for `dataset` (its manifest's memoized digests;
    no store key is computed, no weights looked up)."""
    manifest = make_adapter(config, dataset).manifest()
    digests, clip_keys = _content_keys(config, manifest)
    rows: dict[str, dict[str, str]] = {}
    for name in config.order([stage]):
        rows[name] = _row_keys(config, name, implementation(config.stages[name].implementation), manifest, digests,
                               clip_keys, rows)
    return rows[stage]


def _row_keys(config: PipelineConfig, name: str, impl: Any, manifest: Manifest, digests: dict[str, dict[str, str]],
              clip_keys: dict[str, str], rows: dict[str, dict[str, str]]) -> dict[str, str]:
    """Clip id -> the key of the row it reads in stage `name`: the content the extractor reads (the digest of the
    media file of the first role it decodes, and the segment), its producer's row key for a stage that reads
    another, else (a features dataset's rows, a clip without that media) the clip's own key."""
    producer = _producer(config, name)
    if producer is not None and producer in rows:
        return rows[producer]
    roles = getattr(impl, "roles", ())
    if reads_from_dataset(impl) != "media" or not roles:
        return clip_keys
    out = {}
    for c in manifest.clips:
        role = next((r for r in roles if r in c.media), None)
        out[c.clip_id] = clip_keys[c.clip_id] if role is None else \
            hash_key(["content", digests[c.clip_id][role], c.start, c.end])
    return out


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
    results = [ClipResult(k, k, outputs.get(i), None if i in outputs else reasons[i])  # a row: its key is its id
               for i, k in enumerate(task.clip_keys)]
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
    rows = ctx.rows[name]
    scan = scan_store(sk.store_path, rows)
    done, shards_reused, failures = committed(scan, rows)
    retry = _retries(ctx, name, failures, retry_failed)
    legacy = sk.legacy_path is not None and (sk.legacy_path / "commits").is_dir()  # a format-2 store to adopt
    complete = len(done - retry) == total and not scan.is_damaged and not legacy
    if complete and (scan.legacy or scan.moved):  # records to bring up to date, nothing to compute
        try:
            return _compute_stage(ctx, sk, execution, on_progress, on_wait, on_plan, executor, notice, t0, retry_failed)
        except OSError as e:
            log.info("%s: records not updated (%s); a read-only cache?", name, e)
    if complete:
        report = StageReport(name, sk.store_path, total, reused=total, shards_reused=shards_reused,
                             failed=len(failures), failures=failures,
                             failures_log=_write_dataset_failures(ctx, name, failures))
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
    from .media.common import is_transient

    if retry_failed:
        return {f["id"] for f in failures}
    out = {f["id"] for f in failures if f.get("transient", is_transient(f["reason"]))}
    waiting = [f["id"] for f in failures if f["reason"].startswith("upstream failed") and f["id"] not in out]
    producer = _producer(ctx.config, name)
    if waiting and producer in ctx.stages:
        ok, _ = scan_store(ctx.stages[producer].store_path, ctx.rows[producer]).current(ctx.rows[producer])
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
        rows = ctx.rows[name]
        scan = scan_store(sk.store_path, rows)  # again: another run may have worked meanwhile
        if scan.attrs_problem:
            notice(f"{name}: {scan.attrs_problem}; rewriting it from the stage's definition")
        writer = StoreWriter(sk.store_path, sk.attrs, ctx.config.backend)
        writer.clean_temporaries()
        if _adopt_legacy(ctx, sk, writer, notice):
            scan = scan_store(sk.store_path, rows)
        scan = _repair(writer, scan, name, notice)
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
                notice(f"{name}: {impl(impl.Config(**sk.params)).expected_size(len(compute))} to write "
                       f"(one row per picture: {len(todo) - len(compute):,} more item(s) read a row computed here)")
        if on_plan:
            on_plan(report, len(compute))

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
                                    f"see {rep.failures_log}")
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
