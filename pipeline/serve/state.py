"""What `pipeline serve` holds between requests: the cache's runs, each run's loaded model (`RunQueries`, the
code path of `pipeline embed`), its galleries (an embeddings store's index with each row's dataset item) and the
datasets' manifests. Every name from a URL is checked here: runs are looked up under CACHE/runs, media through
the manifest, files inside their run directory; nothing else is ever opened."""
from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import PipelineConfig
from .index import VectorIndex

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a dataset or run directory name: no separators, no '..'
LOADED_RUNS = 2  # models kept loaded at once


class ServeError(Exception):
    """A request that cannot be answered: an HTTP status and a message that says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def inside(path: Path, root: Path) -> Path:
    """`path` resolved, when it lies inside `root`; else a 400 ServeError."""
    p, r = Path(path).resolve(), Path(root).resolve()
    if p != r and r not in p.parents:
        raise ServeError(400, "that path leaves its folder; only files of the cache and the dataset roots are served")
    return p


@dataclass
class Gallery:
    """One modality's embeddings of a run: the index, each row's item, and which rows each scope allows."""

    modality: str
    index: VectorIndex
    clips: list[Any]  # manifest clip per row (None: the item is no longer in the dataset)
    scopes: dict[str, np.ndarray] = field(default_factory=dict)  # scope -> allowed rows
    row_of: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    """One ranked item."""

    rank: int
    row: int
    clip_id: str
    score: float
    clip: Any
    right: bool | None


class Server:
    """The state of one `pipeline serve` process."""

    def __init__(self, config: PipelineConfig, dataset: str | None = None, run: Path | None = None,
                 device: str = "cpu") -> None:
        self.config, self.dataset, self.device = config, dataset, device
        self.cache = Path(config.cache)
        self.runs_root = self.cache / "runs"
        self.start = inside(run, self.runs_root) if run is not None else None
        self._models: OrderedDict[Path, Any] = OrderedDict()
        self._manifests: dict[str, dict[str, Any]] = {}
        self._captions: dict[str, dict[str, set[str]]] = {}
        self._galleries: dict[tuple[Path, str], Gallery] = {}
        self._lock = threading.RLock()  # one model load, one index build at a time (a gallery loads its model)

    # -- runs ------------------------------------------------------------------------------------------------

    def run_dir(self, dataset: str, name: str) -> Path:
        """A run directory from its URL names: both plain names, the directory under CACHE/runs."""
        for part in (dataset, name):
            if not NAME.match(part):
                raise ServeError(400, f"'{part}' is not a run or dataset name (letters, digits, '.', '_', '-')")
        d = inside(self.runs_root / dataset / name, self.runs_root)
        if not d.is_dir():
            raise ServeError(404, f"no run '{name}' of dataset '{dataset}' in {self.runs_root}; the run list at / "
                                  "shows what there is")
        return d

    def info(self, run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """params.yaml and metrics.json of a completed run (409 when it is not complete)."""
        if not (run_dir / "metrics.json").is_file() or not (run_dir / "params.yaml").is_file():
            raise ServeError(409, f"run {run_dir.name} is not complete (no metrics.json yet); finish it with "
                                  "`pipeline run train` on its stage, then reload")
        return (yaml.safe_load((run_dir / "params.yaml").read_text()),
                json.loads((run_dir / "metrics.json").read_text()))

    def model(self, run_dir: Path) -> Any:
        """The run's `RunQueries` (its trainer loaded once; the least recently used of LOADED_RUNS is let go)."""
        from ..query import QueryError, RunQueries

        with self._lock:
            if run_dir not in self._models:
                self.info(run_dir)
                if not (run_dir / "model.pt").is_file():
                    raise ServeError(409, f"run {run_dir.name} saved no final model (model.pt): an evaluate "
                                          "stage's table, or a run that did not finish; search its trained runs")
                try:
                    spec = self.config.datasets.get(run_dir.parent.name)  # runs/<dataset>/<stage>-<key>
                    self._models[run_dir] = RunQueries(run_dir, device=self.device,
                                                       weights_dir=spec.weights_dir if spec else None)
                except QueryError as e:
                    raise ServeError(409, str(e)) from None
                while len(self._models) > LOADED_RUNS:
                    self._models.popitem(last=False)
            self._models.move_to_end(run_dir)
            return self._models[run_dir]

    def modalities(self, run_dir: Path) -> list[str]:
        """The run's embedded modalities (its embeddings stores)."""
        root = run_dir / "embeddings"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    # -- datasets --------------------------------------------------------------------------------------------

    def manifest(self, dataset: str) -> dict[str, Any]:
        """Clip id -> clip of a dataset in stages.yaml ({} when it is not there any more)."""
        if dataset not in self._manifests:
            from ..runner.stagekeys import make_adapter

            try:
                clips = make_adapter(self.config, dataset).manifest().clips
            except Exception as e:  # a dataset gone from stages.yaml or from disk: runs stay searchable
                log.warning("dataset '%s' cannot be read (%s): results show ids only", dataset, e)
                clips = []
            self._manifests[dataset] = {c.clip_id: c for c in clips}
        return self._manifests[dataset]

    def media_path(self, dataset: str, clip_id: str, role: str) -> Path:
        """The file of a clip's media role, checked to lie inside the dataset's root."""
        clip = self.manifest(dataset).get(clip_id)
        if clip is None or role not in clip.media:
            raise ServeError(404, f"dataset '{dataset}' has no item '{clip_id}' with {role} media")
        return inside(Path(clip.media[role]), self.config.dataset(dataset).root)

    # -- galleries and search --------------------------------------------------------------------------------

    def gallery(self, run_dir: Path, modality: str) -> Gallery:
        """The run's `modality` embeddings as an index; scopes `all` and, where the dataset has one, `test`.
        A modality one image row serves per group (its captions') keeps one row per group."""
        if modality not in self.modalities(run_dir):
            have = ", ".join(self.modalities(run_dir)) or "none"
            raise ServeError(400, f"run {run_dir.name} has no {modality} embeddings (it has: {have})")
        key = (run_dir, modality)
        with self._lock:
            if key not in self._galleries:
                index = VectorIndex.from_store(run_dir / "embeddings" / modality, self.cache / "vectors")
                info = yaml.safe_load((run_dir / "params.yaml").read_text())
                clips = self.manifest(info["dataset"])
                rows = [clips.get(cid) for cid in index.ids]
                first = np.ones(len(rows), bool)
                if modality in self._group_outputs(run_dir):
                    seen: set[str] = set()
                    for i, c in enumerate(rows):
                        g = c.group if c is not None else None
                        first[i] = g is None or g not in seen
                        if g is not None:
                            seen.add(g)
                scopes = {"all": first}
                test = np.array([c is not None and c.split == "test" for c in rows], bool)
                if test.any():
                    scopes = {"test": first & test, "all": first}
                self._galleries[key] = Gallery(modality, index, rows, scopes,
                                               {cid: i for i, cid in enumerate(index.ids)})
            return self._galleries[key]

    def _group_outputs(self, run_dir: Path) -> frozenset[str]:
        try:
            return frozenset(self.model(run_dir).trainer.group_outputs())
        except ServeError:
            return frozenset()

    def search(self, run_dir: Path, target: str, vector: np.ndarray, scope: str, k: int,
               truth: tuple[str, set[str]] | None) -> list[Result]:
        """The k items of `target` nearest to `vector` within `scope`; `truth` (field, values): which are right."""
        g = self.gallery(run_dir, target)
        if scope not in g.scopes:
            raise ServeError(400, f"scope '{scope}' is not one of {', '.join(g.scopes)}")
        if not 1 <= k <= 1000:
            raise ServeError(400, "k must be between 1 and 1000")
        if vector.shape[-1] != g.index.vectors.shape[1]:
            raise ServeError(400, f"the query has {vector.shape[-1]} dims and {target} embeddings "
                                  f"{g.index.vectors.shape[1]}: they are not of one space")
        idx, scores = g.index.search(vector[None], k, g.scopes[scope])
        out = []
        for rank, (i, s) in enumerate(zip(idx[0], scores[0]), 1):
            clip = g.clips[int(i)]
            right = None
            if truth is not None and clip is not None:
                right = getattr(clip, truth[0]) in truth[1]
            out.append(Result(rank, int(i), g.index.ids[int(i)], float(s), clip, right))
        return out

    def item_query(self, run_dir: Path, modality: str, clip_id: str) -> tuple[np.ndarray, Any]:
        """A dataset item's own embedding in `modality` (as the run stored it), and its clip."""
        g = self.gallery(run_dir, modality)
        if clip_id not in g.row_of:
            raise ServeError(404, f"run {run_dir.name} has no {modality} embedding of item '{clip_id}'")
        row = g.row_of[clip_id]
        return np.asarray(g.index.vectors[row]), g.clips[row]

    def truth_of(self, clip: Any) -> tuple[str, set[str]] | None:
        """What makes a result right for a query item: the same group (the item's image), else the same class."""
        if clip is None:
            return None
        if clip.group is not None:
            return "group", {clip.group}
        if clip.label is not None:
            return "label", {clip.label}
        return None

    def truth_of_text(self, dataset: str, text: str) -> tuple[str, set[str]] | None:
        """A typed sentence that is one of the dataset's captions: right are the groups it describes."""
        if dataset not in self._captions:  # caption (case and spacing folded) -> groups, made once per dataset
            index: dict[str, set[str]] = {}
            for c in self.manifest(dataset).values():
                for t in c.text if c.group is not None else ():
                    index.setdefault(_folded(t), set()).add(c.group)
            self._captions[dataset] = index
        groups = self._captions[dataset].get(_folded(text))
        return ("group", set(groups)) if groups else None


def _folded(text: str) -> str:
    return " ".join(text.lower().split())
