"""Audio-visual feature and embedding pipeline: `open_store`, `run`, and the registries."""
from __future__ import annotations

import os
from typing import Any

from .registry import DATASETS, EVALUATORS, EXTRACTORS, STORE_BACKENDS, TRAINERS
from .store import FeatureStore

__all__ = ["open_store", "run", "FeatureStore", "DATASETS", "EXTRACTORS", "TRAINERS", "EVALUATORS",
           "STORE_BACKENDS"]


def open_store(path: str | os.PathLike | None = None, *, dataset: str | None = None, stage: str | None = None,
               config: str | os.PathLike = "stages.yaml", cache: str | os.PathLike | None = None) -> FeatureStore:
    """Open a feature store by path (its rows by row key; with `dataset`, that dataset's items), or by dataset + stage
    name as stages.yaml currently defines them (then every
    clip of the dataset must be committed: a partial store raises StoreError naming the command that completes
    it; open it by path to read what is there)."""
    if path is not None and dataset is None:
        return FeatureStore(path)  # a shared store's rows, by row key
    if path is not None:  # a store by path, seen through a dataset's items
        from .config import load_config
        from .runner import item_rows

        cfg = load_config(config, cache=cache)
        name = FeatureStore(path).attrs.get("stage")
        if name not in cfg.stages:
            raise KeyError(f"store {path} was made by stage {name!r}, which {config} does not define")
        return FeatureStore(path, clip_keys=item_rows(cfg, dataset, name), dataset=dataset)
    if stage is None:
        raise ValueError("open_store needs a path, or stage= (and optionally dataset=)")
    from .config import load_config
    from .runner import resolve

    cfg = load_config(config, cache=cache)
    if stage not in cfg.stages:
        raise KeyError(f"no stage '{stage}' in {config}; stages: {', '.join(cfg.stages)}")
    ctx = resolve(cfg, dataset, only=[stage])
    if stage not in ctx.stages:
        raise KeyError(f"stage '{stage}' has no feature store for dataset '{ctx.dataset}' (not an extract or "
                       "import stage, or one that reads features where the dataset holds media, or vice versa)")
    from .context import require_complete
    from .store import StoreError

    scan = require_complete(ctx, stage, StoreError)  # damage or a partial store: the command that completes it
    # the dataset's items -> the rows they read (many items may read one row)
    return FeatureStore(ctx.stages[stage].store_path, clip_keys=ctx.rows[stage], scan=scan, dataset=ctx.dataset)


def run(group: str = "extract", **kwargs: Any) -> Any:
    """Run a stage group for a dataset (see `pipeline.runner.run`)."""
    from .runner import run as _run

    return _run(group, **kwargs)
