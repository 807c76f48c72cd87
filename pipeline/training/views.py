"""Reading a trainer's views: each `View` from its upstream feature store (or the manifest, for text) into
`Items`, in the form the trainer asked for, for the items the task keeps; the others are left out with
their reason."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from models.common.items import Items, MapData, SequenceData, TokensData, View

from ..context import require_complete
from ..store import FeatureStore, clip_mean

if TYPE_CHECKING:
    from ..context import Context
    from .base import RunKeys
    from .tasks import Task

log = logging.getLogger(__name__)

_PRELOAD_BYTES = 1 << 30  # sequences and maps smaller than this in all are read once and kept in memory


def unusable(stores: dict[str, FeatureStore], stages: dict[str, str], clip_id: str,
             optional: frozenset[str] = frozenset()) -> str | None:
    """Why a clip cannot be an item (failed, not computed or empty in one of the view stores, `optional` views
    aside), or None."""
    for view, st in stores.items():
        why = None if view in optional else st.unusable(clip_id)
        if why:
            return f"stage '{stages[view]}': {why}"
    return None


def _distribution(means: np.ndarray, temperature: float) -> np.ndarray:
    """Rows that are probabilities already stay; logits become softmax(logits / temperature)."""
    if (means >= 0).all() and np.allclose(means.sum(axis=1), 1.0, atol=1e-3):
        return means
    z = means / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _has(view: View, store: FeatureStore | None, clip: Any) -> bool:
    """Whether an item has an optional view: a transcript for tokens, usable rows in the view's store otherwise."""
    return bool(clip.text) if view.form == "tokens" else store is not None and store.unusable(clip.clip_id) is None


class Rows(Protocol):
    """What `read_view` reads of a store: a `FeatureStore`, or rows computed in memory (`pipeline.query`)."""

    attrs: dict[str, Any]

    def lengths_of(self, clip_ids: Sequence[str]) -> np.ndarray: ...

    def __getitem__(self, clip_id: str) -> np.ndarray: ...

    def clip_means(self, clip_ids: Sequence[str]) -> np.ndarray: ...

    def unusable(self, clip_id: str) -> str | None: ...


def read_view(view: View, store: Rows | None, ids: list[str], clips: list[Any],
          present: np.ndarray | None = None) -> Any:
    """One view's data for the items `ids` (per group: the group's first item), in the view's form; `present`:
    which items have an optional view (the others read as empty)."""
    if view.form == "tokens":
        return TokensData([c.text[0] if c.text else "" for c in clips], max_len=view.max_len)
    assert store is not None
    dims = [int(d) for d in store.attrs.get("dims") or []]
    if view.form == "sequence":
        dim = int(np.prod(dims)) if dims else 1
        have = [cid for cid, p in zip(ids, present) if p] if present is not None else list(ids)
        assert view.max_len is not None  # a sequence view has one (View checks)
        known = dict(zip(have, np.minimum(store.lengths_of(have), view.max_len))) if have else {}
        lengths = np.array([known.get(cid, 0) for cid in ids], dtype=np.int64)  # an optional view's absent: 0
        cache: dict[str, np.ndarray] = {cid: np.zeros((0, *dims), np.float32) for cid in ids if cid not in known}
        if int(lengths.sum()) * dim * 4 <= _PRELOAD_BYTES:
            cache.update({cid: store[cid][:view.max_len] for cid in have})
        return SequenceData(lambda cid: cache[cid] if cid in cache else store[cid][:view.max_len], list(ids),
                            int(view.max_len or 0), dim, lengths)
    if view.form == "map":
        if len(dims) != 3:
            raise ValueError(f"view '{view.name}' is a map, and its store holds rows of {dims}, not [H, W, C]")
        if len(ids) * int(np.prod(dims)) * np.dtype(view.dtype).itemsize > _PRELOAD_BYTES:
            return MapData(lambda cid: clip_mean(store[cid]).reshape(dims), list(ids), tuple(dims), view.dtype)
        return store.clip_means(ids).reshape(len(ids), *dims).astype(view.dtype)
    means = store.clip_means(ids)
    if view.form == "distribution":
        return _distribution(means.astype(np.float64), view.temperature).astype(view.dtype)
    return means.astype(view.dtype)


def read_items(ctx: "Context", rk: "RunKeys", trainer: Any, task: "Task") -> tuple[Items, dict[str, str]]:
    """Every qualifying item of the dataset with the trainer's views, and the items left out (id -> why)."""
    assert ctx.manifest is not None
    views: list[View] = trainer.views()
    scans = {stage: require_complete(ctx, stage) for stage in {rk.views[v.name] for v in views if v.name in rk.views}}
    stores = {v.name: FeatureStore(ctx.stages[rk.views[v.name]].store_path, clip_keys=ctx.rows[rk.views[v.name]],
                                   scan=scans[rk.views[v.name]], dataset=ctx.dataset)
              for v in views if v.name in rk.views}
    needs_text = any(v.form == "tokens" and not v.optional for v in views)
    optional = [v for v in views if v.optional]
    optional_stored = frozenset(v.name for v in optional if v.name in stores)
    skipped: dict[str, str] = {}
    keep = []
    present: dict[str, list[bool]] = {v.name: [] for v in optional}
    for c in ctx.manifest.clips:
        why = (task.qualifies(c) or unusable(stores, rk.views, c.clip_id, optional_stored)
               or ("no transcript (a text view needs one)" if needs_text and not c.text else None)
               or trainer.needs_media(c))
        has = {v.name: _has(v, stores.get(v.name), c) for v in optional} if not why else {}
        if not why and optional and not any(has.values()):
            why = "none of the views " + ", ".join(v.name for v in optional) + " (an item needs one)"
        if why:
            skipped[c.clip_id] = why
        else:
            keep.append(c)
            for name, h in has.items():
                present[name].append(h)
    if skipped:
        log.warning("stage '%s': %d item(s) left out, e.g. %s: %s", rk.name, len(skipped), *next(iter(skipped.items())))
    fields = task.annotate(keep, ctx.manifest)
    ids = [c.clip_id for c in keep]
    items = Items(ids, {}, frozenset(v.name for v in views if v.per == "group"), media=keep, **fields)
    items.present.update({name: np.array(p, dtype=bool) for name, p in present.items()})
    firsts = items.group_firsts() if items.group_of is not None else None
    for v in views:
        mask = items.present.get(v.name)
        if v.per == "group":
            if firsts is None:
                raise ValueError(f"view '{v.name}' is read per group, and the task '{task.name}' has no groups")
            items.data[v.name] = read_view(v, stores.get(v.name), [ids[i] for i in firsts], [keep[i] for i in firsts],
                                       None if mask is None else mask[firsts])
        else:
            items.data[v.name] = read_view(v, stores.get(v.name), ids, keep, mask)
    extra = trainer.media_data(items)
    items.data.update(extra)
    items.per_group = items.per_group | frozenset(extra)
    return items, skipped
