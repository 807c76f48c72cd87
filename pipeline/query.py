"""New inputs embedded by a trained run exactly as its own items were: each file goes through the extractor chain
that made the run's view (the stores' recorded implementations, params and weights, root to leaf), the rows are
read into the view's form by the training layer's own reader, and the trainer's branch embeds them. One code path
for `pipeline embed` and `pipeline serve`.

Query kinds: `text` (written sentences), `image` (picture files), `audio` (sound or speech files). A kind is
available when the trainer has the ability (models/common/base.py: EmbedsText, EmbedsImages, EmbedsAudio) and,
for files, a view bound to an extract stage; or when the trainer embeds views on their own (EmbedsViews: a zero-shot
space) and a view of that modality is bound to a stage, whose chain then embeds the query (a sentence too)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus", ".mp4", ".webm")
KINDS = ("text", "image", "audio")


class QueryError(ValueError):
    """The run or the inputs cannot be embedded; the message says what to do."""


@dataclass(frozen=True)
class ChainStep:
    """One extractor of a view's chain: its implementation, params and the attrs of the store it wrote."""

    implementation: str
    params: dict[str, Any]
    attrs: dict[str, Any]


def extractor_chain(store_path: Path) -> list[ChainStep]:
    """The extractors that made a store, root first, read from the stores' attrs (each names its upstream's key;
    an upstream store sits beside it as `<stage>-<key>`)."""
    from .store import read_attrs

    steps: list[ChainStep] = []
    path: Path | None = Path(store_path)
    while path is not None:
        read, problem = read_attrs(path)
        if read is None:
            raise QueryError(f"store {path} cannot be read ({problem}); run `pipeline run extract` on the run's "
                             "dataset to recompute it")
        attrs = dict(read)
        steps.append(ChainStep(attrs["extractor"], dict(attrs.get("params") or {}), attrs))
        ups = list((attrs.get("upstream") or {}).values())
        if len(ups) > 1:
            raise QueryError(f"store {path} reads {len(ups)} upstream stores; a query runs single chains only")
        found = sorted(path.parent.glob(f"*-{ups[0]}")) if ups else []
        if ups and not found:
            raise QueryError(f"the upstream store {ups[0]} of {path} is gone from {path.parent}; run `pipeline run "
                             "extract` on the run's dataset to recompute it")
        path = found[0] if found else None
    return steps[::-1]


class MemoryRows:
    """Rows computed in memory for some query ids, read like a `FeatureStore` (attrs, lengths, rows, clip means),
    so the training layer's view reader puts them in the view's form."""

    def __init__(self, rows: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        self.rows, self.attrs = rows, attrs

    def lengths_of(self, ids: Sequence[str]) -> np.ndarray:
        return np.array([len(self.rows[i]) for i in ids], dtype=np.int64)

    def __getitem__(self, cid: str) -> np.ndarray:
        return self.rows[cid]

    def clip_means(self, ids: Sequence[str]) -> np.ndarray:
        from .store import clip_mean

        return np.stack([clip_mean(self.rows[i]) for i in ids])

    def unusable(self, cid: str) -> str | None:
        return None if len(self.rows.get(cid, ())) else "no rows"


class RunQueries:
    """A completed run, loaded once, that embeds new queries of each kind it supports."""

    def __init__(self, run_dir: Path, device: str = "cpu", weights_dir: Path | None = None) -> None:
        """`weights_dir`: the run's dataset's weights directory (`weights: ./DIR` in stages.yaml), where named weights
        are looked for first, as the run's stages looked for them."""
        from .training.run import load_trainer

        self.run_dir = Path(run_dir)
        self.weights_dir = weights_dir
        if not (self.run_dir / "params.yaml").is_file() or not (self.run_dir / "model.pt").is_file():
            raise QueryError(f"{self.run_dir} is not a completed train run (no params.yaml and model.pt); run "
                             "`pipeline run train` on its stage, or pick a run from `pipeline report`")
        self.info: dict[str, Any] = yaml.safe_load((self.run_dir / "params.yaml").read_text())
        self.device = device
        self.trainer = load_trainer(self.run_dir, device=device)
        self.views = {v.name: v for v in self.trainer.views()}
        self._chains: dict[str, list[tuple[Any, dict[str, Any]]]] = {}  # view -> (extractor, its store's attrs)

    def kinds(self) -> dict[str, str]:
        """Query kind -> the modality (embeddings store) its embeddings compare with."""
        from models.common.base import EmbedsAudio, EmbedsImages, EmbedsText

        t, ups = self.trainer, self.info.get("upstream") or {}
        out = dict(self._view_kinds())
        if isinstance(t, EmbedsText):
            out["text"] = "text"
        if isinstance(t, EmbedsImages) and "store" in (ups.get("image") or {}):
            out["image"] = "image"
        if isinstance(t, EmbedsAudio) and "store" in (ups.get(t.audio_view) or {}):
            out["audio"] = t.audio_view
        return out

    def _view_kinds(self) -> dict[str, str]:
        """Query kind -> the view that embeds it, for a trainer that embeds views on their own (EmbedsViews)."""
        from models.common.base import EmbedsViews

        if not isinstance(self.trainer, EmbedsViews):
            return {}
        ups = self.info.get("upstream") or {}
        kinds = {"text": "text", "visual": "image", "audio": "audio"}
        return {kinds[v.modality]: v.name for v in self.views.values()
                if v.modality in kinds and "store" in (ups.get(v.name) or {})}

    def _by_view(self, kind: str, queries: Sequence[Any]) -> np.ndarray | None:
        """A query's embeddings through its view's chain and the trainer's `view_embeddings`, or None when the
        trainer has its own branch for the kind."""
        view = self._view_kinds().get(kind)
        if view is None:
            return None
        return self.trainer.view_embeddings(view, self._view_data(view, queries))

    def check(self, kind: str) -> str:
        """The modality of a query kind, or a QueryError naming the kinds this run takes."""
        kinds = self.kinds()
        if kind not in kinds:
            took = ", ".join(kinds) or "none"
            raise QueryError(f"{self.info['implementation']} runs take no {kind} query (this run takes: {took})")
        return kinds[kind]

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """`[len(texts), d]` embeddings of written sentences."""
        self.check("text")
        if not texts or not all(t.strip() for t in texts):
            raise QueryError("an empty sentence: type some words")
        by_view = self._by_view("text", list(texts))
        return by_view if by_view is not None else self.trainer.text_embeddings(list(texts))

    def images(self, files: Sequence[Path]) -> np.ndarray:
        """`[len(files), d]` embeddings of picture files (the run's image stage, then its image branch)."""
        self.check("image")
        by_view = self._by_view("image", files)
        if by_view is not None:
            return by_view
        if self.trainer.trunk_live:  # a fine-tuned trunk: the run's own, not the stage's weights
            root = self._extractors("image")[0][0]
            frames = [self._load(root, "image", f) for f in files]
            return self.trainer.picture_embeddings(np.stack([x[len(x) // 2] for x in frames]))
        return self.trainer.image_embeddings(self.picture_items(files), np.arange(len(files)))

    def picture_items(self, files: Sequence[Path]) -> Any:
        """Items of picture files, one group each, with the image view read as the run's stage made it."""
        from models.common.items import Items

        ids = _ids(len(files))
        return Items(ids, {"image": self._view_data("image", files)}, frozenset({"image"}), groups=ids,
                     group_of=np.arange(len(ids)))

    def sounds(self, files: Sequence[Path]) -> np.ndarray:
        """`[len(files), d]` embeddings of sound or speech files (the run's audio stages, then its audio branch)."""
        from models.common.items import Items

        view = self.check("audio")
        by_view = self._by_view("audio", files)
        if by_view is not None:
            return by_view
        items = Items(_ids(len(files)), {view: self._view_data(view, files)})
        return self.trainer.audio_embeddings(items, np.arange(len(files)))

    def embed(self, kind: str, queries: Sequence[Any]) -> np.ndarray:
        """Embeddings of queries of one kind (sentences, or files)."""
        embedders: dict[str, Callable[[Sequence[Any]], np.ndarray]] = {
            "text": self.texts, "image": self.images, "audio": self.sounds}
        return embedders[kind](queries)

    # -- the view's extractor chain ------------------------------------------------------------------------

    def _extractors(self, view: str) -> list[tuple[Any, dict[str, Any]]]:
        """The view's extractors with the attrs of the stores they wrote, root first, built once (weights load on
        first use)."""
        if view not in self._chains:
            from extractors.weights import WeightsError

            from .config import ExecutionParams
            from .registry import EXTRACTORS

            store = Path(self.info["upstream"][view]["store"])
            if not store.exists():
                raise QueryError(f"the run's {view} features ({store}) are gone; run `pipeline run extract` on "
                                 f"dataset '{self.info['dataset']}' to recompute them")
            exe = ExecutionParams(device=self.device, weights_dir=str(self.weights_dir) if self.weights_dir else None)
            self._chains[view] = []
            for step in extractor_chain(store):
                cls = EXTRACTORS.get(step.implementation)
                ex = cls(cls.Config(**step.params), exe)
                try:
                    digest = ex.weights_digest()
                except WeightsError as e:
                    raise QueryError(f"the run's {view} features need weights that are not here: {e}") from None
                if digest != step.attrs.get("weights"):  # another file, or a hub name that now means other weights
                    raise QueryError(f"the run's {view} features were computed by {step.implementation} with weights "
                                     f"'{step.params.get('weights')}' of digest {step.attrs.get('weights')}, which now "
                                     f"resolve to {digest}: a query would be embedded unlike the run's items; put "
                                     "those weights back (or recompute the features and retrain)")
                self._chains[view].append((ex, step.attrs))
        return self._chains[view]

    def _load(self, root: Any, role: str, query: Any) -> Any:
        """The root extractor's input from a query file (or, for a stage that reads text, a sentence); a file it
        cannot decode is a QueryError."""
        from .datasets import Clip

        if getattr(root, "reads", "media") == "text":
            return root.load(Clip("q", {}, text=(str(query),)), None)
        try:
            return root.load(Clip(Path(query).name, {role: Path(query).resolve()}), None)
        except Exception as e:  # whatever a decoder raises on a file that is not media: the query's fault
            raise QueryError(f"{Path(query).name}: not a readable {role} file ({e})") from None

    def _view_data(self, view: str, queries: Sequence[Any]) -> Any:
        """The queries' rows (files, or sentences for a text stage) through the view's whole chain (each extractor
        on all of them at once, as a shard), in the view's form, read by the training layer's reader."""
        from .training.views import read_view

        if not queries:
            raise QueryError("no files to embed")
        chain = self._extractors(view)
        role = "image" if self.views[view].modality == "visual" else "audio"
        xs: list[Any] = [self._load(chain[0][0], role, q) for q in queries]
        upstream: dict[str, Any] | None = None
        for ex, attrs in chain:
            outs = ex.compute(xs, upstream)
            for q, x, out in zip(queries, xs, outs):
                if len(out) == 0:
                    raise QueryError(f"{Path(q).name}: {ex.no_rows_reason(x, upstream)}")
            xs, upstream = [np.asarray(o) for o in outs], attrs
        for ex, _ in chain:
            ex.release()
        ids = _ids(len(queries))
        return read_view(self.views[view], MemoryRows(dict(zip(ids, xs)), chain[-1][1]), ids, [None] * len(ids))


def _ids(n: int) -> list[str]:
    """Item ids of n queries."""
    return [f"q{i}" for i in range(n)]
