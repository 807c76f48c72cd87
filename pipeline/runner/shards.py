"""The unit of work: one shard of one store (`ShardTask`), decoded, computed and committed in a worker process
(`run_shard`), and how many clips a shard holds (`shard_size_for`)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..cache import hash_key
from ..config import ExecutionParams, implementation
from ..datasets import Clip, DatasetError
from ..plan import reads_from_dataset
from ..store import ClipResult, FeatureStore, StoreError, StoreWriter

_EXTRACTOR_CACHE: dict[str, Any] = {}  # one model per worker process, keyed by stage key


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
    from ..media import MediaError

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
