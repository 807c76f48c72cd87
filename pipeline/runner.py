"""Run stages of the DAG for a dataset: resolve keys, reuse what is committed, compute the rest in shards."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .cache import DigestMemo, hash_key
from .config import ConfigError, ExecutionParams, PipelineConfig, implementation, key_params, load_config
from .datasets import Clip, DatasetAdapter, Manifest
from .registry import DATASETS, TRAINERS
from .store import ClipResult, FeatureStore, StoreWriter, read_commits, write_failures_log

log = logging.getLogger(__name__)

_EXTRACTOR_CACHE: dict[str, Any] = {}  # one model per worker process, keyed by stage key


class PipelineError(RuntimeError):
    """A run could not complete; the message says what to do."""


@dataclass
class StageKeys:
    """Everything that identifies one stage's result for one dataset."""

    name: str
    implementation: str
    params: dict[str, Any]
    store_key: str
    store_path: Path
    upstream: list[str]
    attrs: dict[str, Any]


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


@dataclass
class Context:
    """A config resolved against one dataset: its manifest, clip keys and every stage's keys."""

    config: PipelineConfig
    dataset: str
    adapter: DatasetAdapter
    manifest: Manifest | None
    clip_keys: dict[str, str]
    stages: dict[str, StageKeys]

    def manifest_digest(self) -> str:
        return hash_key(list(self.clip_keys.items()))


def cache_paths(cache: Path) -> dict[str, Path]:
    """The cache's fixed sub-folders."""
    return {"stores": cache / "stores", "index": cache / "index", "runs": cache / "runs",
            "locks": cache / "locks", "digests": cache / "digests.sqlite"}


def _lock_path(cache: Path, store_path: Path) -> Path:
    path = cache_paths(cache)["locks"] / store_path.parent.name / f"{store_path.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def store_lock(cache: Path, store_path: Path) -> Any:
    """The exclusive inter-process lock of one store's writer (released by the OS if its holder dies)."""
    from filelock import FileLock

    return FileLock(str(_lock_path(cache, store_path)))


@contextlib.contextmanager
def reading(cache: Path, store_path: Path) -> Iterator[None]:
    """Hold a shared lock on a store while reading it, so that `gc` cannot remove it underneath."""
    import fcntl

    with open(_lock_path(cache, store_path), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _reads(impl: Any) -> str | None:
    """What a root stage reads from its dataset ('media' or 'features'); None when it reads upstream stores."""
    return getattr(impl, "reads", "media") if getattr(impl, "consumes", None) is None else None


def make_adapter(config: PipelineConfig, dataset: str | None) -> DatasetAdapter:
    """Instantiate the dataset adapter named in stages.yaml."""
    spec = config.dataset(dataset)
    cls = DATASETS.get(spec.adapter)
    return cls(spec.name, spec.root, cls.Config(**spec.params))


def resolve(config: PipelineConfig, dataset: str | None, prepare: bool = False,
            need_manifest: bool = True, only: list[str] | None = None,
            errors: dict[str, str] | None = None, manifest: Manifest | None = None) -> Context:
    """Compute store keys for `dataset` (the `only` stages and their upstream, else all) and the
    manifest's clip keys. With `errors`, a stage whose key cannot be computed (e.g. its weights are
    missing) is recorded there, with everything downstream of it, instead of raising. `manifest`:
    one already read for this dataset (after prepare), not read again."""
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
        spec = config.stages[name]
        impl = implementation(spec.implementation)
        if not hasattr(impl, "output_spec"):
            continue  # trainers resolve their own keys
        if errors is not None and any(u in errors for u in spec.upstream):
            errors[name] = "an upstream stage cannot be resolved"
            continue
        if _reads(impl) not in (None, adapter.kind):
            continue  # e.g. an import stage on a media dataset: it does not apply (run() says so if asked)
        if any(u not in stages for u in spec.upstream):
            continue
        params = config.params_for(name, adapter.dataset_name)
        ex = impl(impl.Config(**params))
        ex.allow_download = prepare  # only a run fetches weights; status and gc never do
        up_attrs = _producer_attrs(config, stages, name)
        if _reads(impl) == "features":
            up_attrs = {"source": adapter.feature_spec()}
        try:
            out = ex.output_spec(up_attrs)
            weights = ex.weights_digest()
        except WeightsError as e:
            if errors is None:
                raise
            errors[name] = str(e)
            continue
        store_key = hash_key({
            "implementation": spec.implementation, "version": impl.VERSION, "params": key_params(impl.Config, params),
            "weights": weights, "upstream": [stages[u].store_key for u in spec.upstream],
            "dataset": adapter.dataset_name, "backend": config.backend})
        attrs = {
            **out.extra,  # the extractor's own metadata first: the reserved keys below win
            "key": store_key, "stage": name, "dataset": adapter.dataset_name,
            "extractor": spec.implementation, "version": impl.VERSION, "params": params,
            "weights": weights, "upstream": {u: stages[u].store_key for u in spec.upstream},
            "modality": ex.modality, "kind": out.kind, "dims": None if out.dims is None else list(out.dims),
            "dtype": out.dtype, "frame_rate": out.frame_rate,
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


def run_shard(task: ShardTask) -> dict[str, Any]:
    """Decode (threads), compute (batched), write and commit one shard; return its summary."""
    import extractors  # noqa: F401  (registers extractors in a fresh worker)
    from .media import MediaError

    ex = _extractor(task)

    def load(clip: Clip) -> tuple[Any, str | None]:
        try:
            return ex.load(clip, task.upstream), None
        except MediaError as e:
            return None, e.reason

    threads = max(1, min(task.execution.get("decode_threads", 4), len(task.clips)))
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            loaded = list(pool.map(load, task.clips))
    finally:
        ex.release()
    reasons = {i: why for i, (_, why) in enumerate(loaded)}
    ok = [i for i, (x, _) in enumerate(loaded) if x is not None]
    outputs: dict[int, Any] = {}
    batch = max(1, task.execution.get("batch_size", 32))
    for b in range(0, len(ok), batch):
        idx = ok[b:b + batch]
        for i, out in zip(idx, ex.compute([loaded[i][0] for i in idx], task.upstream_attrs)):
            outputs[i] = out
    writer = StoreWriter(task.store_path)
    for i, out in list(outputs.items()):  # a clip unlike the others fails alone, not the shard
        why = writer.mismatch(out)
        if why:
            reasons[i] = why
            del outputs[i]
    results = [ClipResult(c.clip_id, k, outputs.get(i), None if i in outputs else reasons[i])
               for i, (c, k) in enumerate(zip(task.clips, task.clip_keys))]
    record = writer.write_shard(task.shard_id, results)
    return {"shard": task.shard_id, "ok": len(record["clips"]), "failed": record["failed"]}


def _committed(store_path: Path, clip_keys: dict[str, str]) -> tuple[set[str], int, int]:
    """Clip ids whose current key is committed (ok or failed), how many shards hold them, how many failed."""
    done: set[str] = set()
    shards = failed = 0
    if not (store_path / "commits").is_dir():
        return done, 0, 0
    for rec in read_commits(store_path):
        hit = False
        for entry in rec["clips"] + rec["failed"]:
            if clip_keys.get(entry["id"]) == entry["key"]:
                done.add(entry["id"])
                hit = True
        failed += sum(1 for f in rec["failed"] if clip_keys.get(f["id"]) == f["key"])
        shards += hit
    return done, shards, failed


def require_complete(ctx: Context, name: str) -> None:
    """Fail, naming the command that fills it, unless stage `name` has committed every clip of the manifest."""
    assert ctx.manifest is not None
    done, _, _ = _committed(ctx.stages[name].store_path, ctx.clip_keys)
    if len(done) < len(ctx.manifest):
        raise PipelineError(f"stage '{name}' holds {len(done)} of {len(ctx.manifest)} clips of dataset "
                            f"'{ctx.dataset}'; run `pipeline run {ctx.config.stages[name].group} --dataset "
                            f"{ctx.dataset} --stage {name}` first")


def _write_index(ctx: Context, sk: StageKeys, report: StageReport) -> None:
    index = cache_paths(ctx.config.cache)["index"] / ctx.dataset
    index.mkdir(parents=True, exist_ok=True)
    tmp = index / f".tmp-{sk.name}-{os.getpid()}.json"
    tmp.write_text(json.dumps({"stage": sk.name, "store_key": sk.store_key, "store": str(sk.store_path),
                               "manifest": ctx.manifest_digest(), "clips": report.total,
                               "failed": report.failed, "completed": time.time()}, indent=2))
    os.replace(tmp, index / f"{sk.name}.json")


def _acquire(lock: Any, what: str, on_wait: Callable[[str], None] | None) -> None:
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        msg = f"{what}: another run holds {lock.lock_file}; waiting for it to finish"
        log.info(msg)
        if on_wait:
            on_wait(msg)
        lock.acquire()


def run_stage(ctx: Context, name: str, execution: ExecutionParams,
              on_progress: Callable[[int], None] | None = None,
              on_wait: Callable[[str], None] | None = None,
              on_plan: Callable[[StageReport, int], None] | None = None,
              executor: Any = None) -> StageReport:
    """Bring one stage's store up to date for every clip of the manifest."""
    sk = ctx.stages[name]
    assert ctx.manifest is not None
    t0 = time.perf_counter()
    sk.store_path.parent.mkdir(parents=True, exist_ok=True)
    lock = store_lock(ctx.config.cache, sk.store_path)
    producer = _producer(ctx.config, name)
    with contextlib.ExitStack() as held:
        _acquire(lock, f"stage '{name}'", on_wait)
        held.callback(lock.release)
        if producer:
            held.enter_context(reading(ctx.config.cache, ctx.stages[producer].store_path))
        writer = StoreWriter(sk.store_path, sk.attrs, ctx.config.backend)
        writer.clean_temporaries()
        done, shards_reused, _ = _committed(sk.store_path, ctx.clip_keys)
        todo = [c for c in ctx.manifest.clips if c.clip_id not in done]
        report = StageReport(name, sk.store_path, total=len(ctx.manifest.clips), reused=len(done),
                             shards_reused=shards_reused)
        upstream = None
        if producer:
            upstream = FeatureStore(ctx.stages[producer].store_path, clip_keys=ctx.clip_keys)
        size = max(1, execution.shard_size)
        tasks = []
        for s in range(0, len(todo), size):
            chunk = todo[s:s + size]
            keys = [ctx.clip_keys[c.clip_id] for c in chunk]
            tasks.append(ShardTask(
                shard_id=hash_key([sk.store_key, keys]), store_path=str(sk.store_path),
                implementation=sk.implementation, params=sk.params, execution=dataclasses.asdict(execution),
                cache_key=sk.store_key, clips=chunk, clip_keys=keys,
                upstream=upstream.subset(c.clip_id for c in chunk) if upstream is not None else None,
                upstream_attrs=upstream.attrs if upstream is not None else None))
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
        failures = write_failures_log(sk.store_path)
        current = {f["id"] for f in failures if ctx.clip_keys.get(f["id"]) == f["key"]}
        report.failures = [f for f in failures if f["id"] in current]
        report.failed = len(report.failures)
        _write_index(ctx, sk, report)
    report.seconds = time.perf_counter() - t0
    return report


def select_stages(config: PipelineConfig, group: str | None, stage: str | None) -> list[str]:
    """Stages to run, in order: a group (or one stage) and everything upstream of it."""
    if stage:
        if stage not in config.stages:
            raise ConfigError(f"{config.path}: unknown stage '{stage}'; known: {', '.join(config.stages)}")
        if group and config.stages[stage].group != group:
            raise ConfigError(f"stage '{stage}' is in group '{config.stages[stage].group}', not '{group}'")
        return config.order([stage])
    return config.order(config.group(group or "extract"))


def status(config: PipelineConfig, dataset: str | None) -> list[dict[str, Any]]:
    """Per stage: up to date / missing / partial N of M clips / stale, like `dvc status`."""
    errors: dict[str, str] = {}
    ctx = resolve(config, dataset, errors=errors)
    rows = [{"stage": name, "state": f"cannot resolve: {why}", "done": 0, "total": 0, "failed": 0, "store": None}
            for name, why in errors.items()]
    assert ctx.manifest is not None
    index = cache_paths(config.cache)["index"] / ctx.dataset
    for name, sk in ctx.stages.items():
        done, _, failed = _committed(sk.store_path, ctx.clip_keys)
        total = len(ctx.manifest.clips)
        pointer = index / f"{name}.json"
        last = json.loads(pointer.read_text()) if pointer.exists() else None
        if len(done) == total:
            state = "up to date"
        elif last and last["store_key"] != sk.store_key and not done:
            state = "stale (params, code or upstream changed since the last run)"
        elif done:
            state = f"partial {len(done)} of {total} clips"
        else:
            state = "missing"
        rows.append({"stage": name, "state": state, "done": len(done), "total": total, "failed": failed,
                     "store": str(sk.store_path)})
    return rows + _run_status(ctx, [n for n in config.stages if n not in ctx.stages and n not in errors])


def _run_status(ctx: Context, names: list[str]) -> list[dict[str, Any]]:
    """Train/evaluate stages: up to date / partial k folds / missing / stale, by their run directories."""
    from .train import TrainError, resolve_runs

    rows = []
    skip = inapplicable(ctx.config, ctx.manifest, names) if ctx.manifest else {}
    for name in names:
        if name in skip:
            rows.append({"stage": name, "state": f"does not apply: {skip[name]}", "done": 0, "total": 0, "failed": 0,
                         "store": None})
            continue
        try:
            rk = resolve_runs(ctx, [name]).get(name)
        except TrainError as e:
            rows.append({"stage": name, "state": f"cannot resolve: {e}", "done": 0, "total": 0, "failed": 0,
                         "store": None})
            continue
        if rk is None:
            continue
        folds = [p for p in (rk.run_dir / "folds").glob("*/embeddings.npz")] if rk.kind == "train" else []
        if (rk.run_dir / "metrics.json").exists():
            state = "up to date"
        elif folds:
            state = f"partial: {len(folds)} fold(s) committed"
        elif any(p != rk.run_dir for p in rk.run_dir.parent.glob(f"{name}-*")):
            state = "stale (params, code or upstream changed since the last run)"
        else:
            state = "missing"
        rows.append({"stage": name, "state": state, "done": 0, "total": 0, "failed": 0, "store": str(rk.run_dir)})
    return rows


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_cache(config: PipelineConfig) -> list[dict[str, Any]]:
    """Every store (and run) in the cache with its size, clip count and what produced it."""
    out = []
    stores = cache_paths(config.cache)["stores"]
    for attrs_path in sorted(stores.glob("*/*/attrs.json")):
        path = attrs_path.parent
        attrs = json.loads(attrs_path.read_text())
        n = sum(len(r["clips"]) for r in read_commits(path))
        out.append({"kind": "store", "path": str(path), "dataset": attrs.get("dataset"),
                    "stage": attrs.get("stage"), "extractor": attrs.get("extractor"),
                    "params": attrs.get("params"), "clips": n, "bytes": _size(path)})
    runs = cache_paths(config.cache)["runs"]
    for params_path in sorted(runs.glob("*/*/params.yaml")):
        out.append({"kind": "run", "path": str(params_path.parent), "bytes": _size(params_path.parent)})
    return out


def garbage(config: PipelineConfig) -> tuple[list[Path], list[str]]:
    """Stores that no current key of any dataset in stages.yaml references, and datasets left alone."""
    keep: set[Path] = set()
    skipped: list[str] = []
    for name in config.datasets:
        unresolved: dict[str, str] = {}
        try:
            ctx = resolve(config, name, need_manifest=False, errors=unresolved)
        except Exception as e:  # a dataset we cannot resolve keeps all its stores
            skipped.append(f"{name}: {e}")
            keep.update(p.parent for p in (cache_paths(config.cache)["stores"] / name).glob("*/attrs.json"))
            continue
        keep.update(sk.store_path for sk in ctx.stages.values())
        for stage in unresolved:  # unknown current key: keep every store of that stage
            keep.update(p for p in (cache_paths(config.cache)["stores"] / name).glob(f"{stage}-*"))
    stores = cache_paths(config.cache)["stores"]
    unused = [p for p in sorted(stores.glob("*/*")) if p.is_dir() and p not in keep]
    return unused, skipped


def collect_garbage(config: PipelineConfig, dry_run: bool = False) -> tuple[list[tuple[Path, int]], list[str]]:
    """Remove (or with dry_run only list) unreferenced stores; returns (path, bytes) of each."""
    from filelock import Timeout

    unused, skipped = garbage(config)
    removed = []
    for p in unused:
        size = _size(p)
        if not dry_run:
            lock = store_lock(config.cache, p)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                skipped.append(f"{p}: in use by a running stage")
                continue
            try:
                shutil.rmtree(p)
            finally:
                lock.release()
            Path(lock.lock_file).unlink(missing_ok=True)
        removed.append((p, size))
    return removed, skipped


def inapplicable(cfg: PipelineConfig, manifest: Manifest, names: list[str]) -> dict[str, str]:
    """Why each run stage among `names` cannot run on this manifest: train stages that cannot learn
    from it, evaluate stages whose train stages all cannot, and stages starting from one that cannot."""
    from .captions import applies

    why = {n: r for n in names if cfg.stages[n].implementation in TRAINERS
           and (r := applies(TRAINERS.get(cfg.stages[n].implementation), manifest))}
    for n in cfg.order(names) if why else []:
        ups = [u for u in cfg.stages[n].upstream if u in names and _is_run_stage_name(cfg, u)]
        if n in why or not ups:
            continue
        if all(u in why for u in ups):
            why[n] = "every train stage it reads does not apply"
        elif any(u in why for u in ups) and cfg.stages[n].implementation in TRAINERS:
            why[n] = f"it starts from '{next(u for u in ups if u in why)}', which does not apply"
    return why


def _drop_inapplicable(cfg: PipelineConfig, adapter: DatasetAdapter, names: list[str], targets: list[str],
                       explicit: bool, on_skip: Callable[[str, str], None] | None
                       ) -> tuple[list[str], Manifest | None]:
    """`names` without the train stages that cannot learn from this dataset (and what only they need),
    and the manifest read to decide (None when no train stage is among `names`). Asked for by name
    (`--stage`), such a stage is an error that says why."""
    if not any(cfg.stages[n].implementation in TRAINERS for n in names):
        return names, None
    adapter.prepare()
    manifest = adapter.manifest()
    why = inapplicable(cfg, manifest, names)
    if not why:
        return names, manifest
    dropped = set(why)
    if explicit and targets[0] in dropped:
        raise PipelineError(f"stage '{targets[0]}' does not apply to dataset '{adapter.dataset_name}': "
                            f"{why[targets[0]]}")
    needed: set[str] = set()
    for n in targets:
        if n in names and n not in dropped:
            needed.update(cfg.order([n]))
    for n in names:
        if n in dropped and on_skip:
            on_skip(n, why[n])
        elif n in dropped:
            log.info("stage '%s' skipped on dataset '%s': %s", n, adapter.dataset_name, why[n])
    return [n for n in names if n in needed], manifest


def _is_run_stage_name(cfg: PipelineConfig, name: str) -> bool:
    """True when stage `name` runs a trainer or an evaluator."""
    from .train import is_run_stage

    return is_run_stage(implementation(cfg.stages[name].implementation))


def run(group: str | None = "extract", dataset: str | None = None, stage: str | None = None,
        overrides: list[str] | tuple[str, ...] = (), config: str | os.PathLike | PipelineConfig = "stages.yaml",
        cache: str | os.PathLike | None = None, strict: bool = False,
        on_progress: Callable[[int], None] | None = None, on_wait: Callable[[str], None] | None = None,
        on_plan: Callable[[StageReport, int], None] | None = None,
        on_skip: Callable[[str, str], None] | None = None,
        on_epoch: Callable[[str, int, int, float], None] | None = None,
        **execution: Any) -> list[Any]:
    """Run a group (or one stage) and everything upstream for a dataset; return a report per stage
    (a StageReport per feature stage, a pipeline.train.RunReport per train/evaluate stage)."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, overrides, cache)
    names = select_stages(cfg, group, stage)
    targets = [stage] if stage else cfg.group(group or "extract")
    adapter = make_adapter(cfg, dataset)
    from .captions import run_caption_train, task_of
    from .train import TrainError, is_run_stage, resolve_runs, run_evaluate, run_train

    reads = {n: _reads(implementation(spec.implementation)) for n, spec in cfg.stages.items()}
    source = {}  # what each stage reads in the end: media or features (None for train/evaluate stages)
    kept: list[str] = []  # stages that apply to this dataset; a trainer picks its views among them
    for n in cfg.order():
        run_stage_ = is_run_stage(implementation(cfg.stages[n].implementation))
        ups = cfg.stages[n].upstream
        source[n] = reads[n] or (None if run_stage_ else next((source[u] for u in ups if source[u]), None))
        if source[n] in (None, adapter.kind) and (run_stage_ or all(u in kept for u in ups)):
            kept.append(n)
    wrong = [n for n in targets if n not in kept]
    if wrong:
        fits = [n for n in cfg.stages if reads[n] == adapter.kind]
        hint = (f"; stages that read {adapter.kind}: {', '.join(fits)} (group "
                f"'{cfg.stages[fits[0]].group}')" if fits else "")
        raise PipelineError(f"dataset '{adapter.dataset_name}' holds {adapter.kind}, but stage(s) "
                            f"{', '.join(wrong)} read {source[wrong[0]]}{hint}")
    names = [n for n in names if n in kept]
    names, manifest = _drop_inapplicable(cfg, adapter, names, targets, stage is not None, on_skip)
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing and any(reads[n] == "media" for n in names):
        raise PipelineError(f"{' and '.join(missing)} not found on PATH; install Debian's ffmpeg "
                            "(apt-get install ffmpeg) or run `bash .ci/setup`")
    ctx = resolve(cfg, dataset, prepare=True, only=names, manifest=manifest)
    from .executors import Executor

    try:
        runs = resolve_runs(ctx, names)
    except TrainError as e:
        raise PipelineError(str(e)) from None
    reports: list[Any] = []
    with Executor() as executor:
        for name in names:
            ex = cfg.execution_for(name, **execution)
            try:
                if name in runs and runs[name].kind == "train":
                    if task_of(TRAINERS.get(runs[name].implementation)) == "captions":
                        reports.append(run_caption_train(ctx, runs[name], runs, ex.device, on_wait, on_epoch))
                    else:
                        reports.append(run_train(ctx, runs[name], ex.device, on_wait))
                    continue
                if name in runs:
                    reports.append(run_evaluate(ctx, runs[name], runs, on_wait))
                    continue
            except TrainError as e:
                raise PipelineError(f"stage '{name}': {e}") from None
            if name not in ctx.stages:
                raise PipelineError(f"stage '{name}' cannot run on dataset '{ctx.dataset}' (an upstream stage "
                                    "does not apply to it)")
            rep = run_stage(ctx, name, ex, on_progress, on_wait, on_plan, executor)
            reports.append(rep)
            if strict and rep.failed:
                raise PipelineError(f"stage '{name}': {rep.failed} clip(s) failed and --strict is set; "
                                    f"see {rep.store_path / 'failures.jsonl'}")
    return reports
