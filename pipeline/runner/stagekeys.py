"""Resolving a config against a dataset: the adapter, every feature stage's store key, view key and attrs, and
each clip's row key in each stage's store (`resolve` makes the `Context` everything else reads)."""
from __future__ import annotations

from typing import Any

from ..cache import DigestMemo, hash_key
from ..config import PipelineConfig, implementation, key_params
from ..context import Context, StageKeys, cache_paths
from ..datasets import DatasetAdapter, Manifest
from ..plan import Plan, reads_from_dataset
from ..registry import DATASETS
from ..training import is_run_stage


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
        if reads_from_dataset(impl) not in (None, adapter.kind, "text"):
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
    media file of the first role it decodes, and the segment; the text a text stage reads), its producer's row key
    for a stage that reads another, else (a features dataset's rows, a clip without that media) the clip's own key."""
    producer = _producer(config, name)
    if producer is not None and producer in rows:
        return rows[producer]
    if reads_from_dataset(impl) == "text":  # a caption's row is its text: one row for a sentence however often it recurs
        return {c.clip_id: hash_key(["text", c.text[0]]) if c.text else clip_keys[c.clip_id] for c in manifest.clips}
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


def _model_contexts(cfg: PipelineConfig, plan: Plan) -> dict[str, Context]:
    """The contexts of the datasets whose trained models the plan's evaluate stages apply to its dataset."""
    wanted: dict[str, list[str]] = {}
    for n, other in plan.foreign.items():
        wanted.setdefault(other, []).extend(u for u in cfg.stages[n].upstream
                                            if is_run_stage(implementation(cfg.stages[u].implementation)))
    return {d: resolve(cfg, d, only=ups) for d, ups in wanted.items()}
