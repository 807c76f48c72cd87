"""A config resolved against one dataset (`Context`): its manifest, clip keys and every feature stage's keys
and store path. Shared by the runner and the training layer."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import hash_key
from .config import PipelineConfig
from .datasets import DatasetAdapter, Manifest
from .store import StoreScan, scan_store


class PipelineError(RuntimeError):
    """A run could not complete; the message says what to do."""


@dataclass
class StageKeys:
    """Everything that identifies one feature stage's result for one dataset."""

    name: str
    implementation: str
    params: dict[str, Any]
    store_key: str
    store_path: Path
    upstream: list[str]
    attrs: dict[str, Any]
    view_key: str = ""  # the stage's content for this dataset: what run keys read (the key stores had before format 3)
    legacy_path: Path | None = None  # where a store of this stage and dataset lay before rows were keyed by content


@dataclass
class Context:
    """A config resolved against one dataset: its manifest, clip keys and every stage's keys."""

    config: PipelineConfig
    dataset: str
    adapter: DatasetAdapter
    manifest: Manifest | None
    clip_keys: dict[str, str]
    stages: dict[str, StageKeys]
    rows: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> clip id -> row key in its store

    def manifest_digest(self) -> str:
        return hash_key(list(self.clip_keys.items()))


def cache_paths(cache: Path) -> dict[str, Path]:
    """The cache's fixed sub-folders."""
    return {"stores": cache / "stores", "index": cache / "index", "runs": cache / "runs",
            "locks": cache / "locks", "digests": cache / "digests.sqlite"}


def committed(scan: StoreScan, clip_keys: dict[str, str]) -> tuple[set[str], int, list[dict[str, Any]]]:
    """Clip ids whose row (`clip_keys`: clip id -> row key) is committed (ok or failed), how many shards hold
    them, and the current failures, one per clip (its id, the row's reason)."""
    ok, failed = scan.current(clip_keys)
    shards = {rec["shard"] for rec, _ in ok.values()} | {rec["shard"] for rec, _ in failed.values()}
    return set(ok) | set(failed), len(shards), [{**f, "id": cid} for cid, (_, f) in failed.items()]


def require_complete(ctx: Context, name: str, error: type[Exception] = PipelineError) -> StoreScan:
    """Fail (`error`), naming the command that fills it, unless stage `name` has committed every clip of the
    manifest and none of it is damaged; the store's scan (a FeatureStore opened on it need not scan again)."""
    assert ctx.manifest is not None
    sk = ctx.stages[name]
    scan = scan_store(sk.store_path, ctx.rows[name])
    command = (f"`pipeline run {ctx.config.stages[name].group} --dataset {ctx.dataset} --stage {name}`")
    if scan.is_damaged:
        raise error(f"stage '{name}' of dataset '{ctx.dataset}' is damaged ({scan.describe_damage()}); "
                    f"run {command} to recompute it")
    done, _, _ = committed(scan, ctx.rows[name])
    if len(done) < len(ctx.manifest):
        raise error(f"stage '{name}' holds {len(done)} of {len(ctx.manifest)} clips of dataset "
                    f"'{ctx.dataset}'; run {command} first")
    return scan
