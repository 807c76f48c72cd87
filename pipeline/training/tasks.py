"""The task contract: what the items of a train stage are and how they are scored. A task decides which items
qualify (and why the others are left out), cuts them into units (folds, or one split with a validation part for
model selection), saves each unit's held-out embeddings, names the final model, and evaluates: its metrics, its
one-line summary, its table and its plot, and what `pipeline report` shows of its runs (rows and sections).

The tasks themselves live with the methods: the shared `classes` and `pairs` in models/common/tasks.py, a method's
own (VGS's `localization`, DSVE-loc's `grounding`, See-Hear-Read's `modalities`) in its folder.

A `Unit` refuses training items that are also held out, so no run can train on what it scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import yaml

from .sections import Row, Section, features_text, run_row

if TYPE_CHECKING:
    from models.common.items import Items

    from ..context import Context
    from ..datasets import Clip, Manifest
    from ..query import RunQueries

VAL_SPLITS = ("val", "dev", "valid", "validation")


@dataclass(frozen=True)
class Unit:
    """One round of a protocol: train on `train`, select the model on `val`, embed and score `test`
    (indices into the task's items). Training items are never held out: overlap is refused here."""

    name: str
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None
    val_is_test: bool = False  # a corpus with no test split (Places): the model is selected on what it is scored on

    def __post_init__(self) -> None:
        for other, what in ((self.test, "held out"), (self.val, "validation")):
            if other is not None and np.intersect1d(self.train, other).size:
                raise ValueError(f"unit '{self.name}': {np.intersect1d(self.train, other).size} item(s) would be "
                                 f"both trained on and {what}")
        if self.val is None:
            return
        if self.val_is_test:
            if not np.array_equal(np.sort(self.val), np.sort(self.test)):
                raise ValueError(f"unit '{self.name}': val_is_test, but its validation and test items differ")
        elif np.intersect1d(self.val, self.test).size:
            raise ValueError(f"unit '{self.name}': {np.intersect1d(self.val, self.test).size} item(s) would be both "
                             "validation and held out (pass val_is_test=True where the corpus has no test split)")


def natural_key(s: str) -> tuple:
    """Sort key: numbers by value ('fold-2' before 'fold-10'), then names."""
    return (0, int(s)) if s.lstrip("-").isdigit() else (1, s)


class Task:
    """Base class of tasks; see the module docstring."""

    name: ClassVar[str]
    digest_field: ClassVar[str]  # the run key's entry for what the task reads besides the features
    final: ClassVar[str]  # "refit": the final model trains on every item; "unit": it is the (one) unit's model
    plot_file: ClassVar[str]  # the picture `plot` writes into a run directory
    plot_label: ClassVar[str]
    modalities: ClassVar[tuple[str, ...]] = ()  # the embeddings it scores (arrays of a unit's saved embeddings)
    aliases: ClassVar[tuple[str, ...]] = ()  # names older runs' metrics.json recorded (a subclass does not inherit them)
    sections: ClassVar[tuple[type[Section], ...]] = ()  # what `pipeline report` shows of its runs
    # what `explain` draws (`pipeline serve`): "text", a typed phrase over a picture; "word", a spoken word of an item
    # the run scored over its image
    explains: ClassVar[tuple[str, ...]] = ()

    def applies(self, manifest: "Manifest") -> str | None:
        """Why this task cannot be learned from the dataset, or None when it can."""
        raise NotImplementedError

    def digest(self, ctx: "Context") -> str:
        """Digest of what the task reads from the manifest (labels, folds, pairing, splits, text)."""
        raise NotImplementedError

    def qualifies(self, clip: "Clip") -> str | None:
        """Why a clip cannot be an item of this task, or None."""
        raise NotImplementedError

    def annotate(self, clips: list["Clip"], manifest: "Manifest") -> dict[str, Any]:
        """Item fields of `Items` the task defines (labels and classes, or groups)."""
        raise NotImplementedError

    def plan(self, items: "Items", params: dict[str, Any]) -> tuple[str, list[Unit], dict[str, Any]]:
        """The protocol used, its units, and what params.yaml should say about them."""
        raise NotImplementedError

    def unit_dir(self, run_dir: Path, unit: Unit) -> Path:
        raise NotImplementedError

    def committed(self, run_dir: Path, unit: Unit) -> bool:
        """Whether a unit's results are on disk (a resumed run skips it)."""
        raise NotImplementedError

    def save_unit(self, run_dir: Path, unit: Unit, trainer: Any, test: "Items", seconds: float) -> None:
        """Write a trained unit's model and held-out embeddings (atomically: a killed run never leaves half)."""
        raise NotImplementedError

    def embed_parts(self, items: "Items", units: list[Unit]) -> list[np.ndarray]:
        """Index sets whose embeddings fill the run's embedding stores (each embedded on its own)."""
        return [np.arange(len(items))]

    def write_stores(self, ctx: "Context", rk: Any, trainer: Any, items: "Items", units: list[Unit]) -> None:
        """Further stores of the final model the task scores (a localization task's AV tensors); none here."""

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        """The run's metrics from its saved units (also what an evaluate stage computes, with its params)."""
        raise NotImplementedError

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        """One picture of runs (name -> (run dir, metrics)); returns its path."""
        raise NotImplementedError

    def line(self, metrics: dict[str, Any]) -> str:
        """One run's metrics in one line."""
        raise NotImplementedError

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        """A plain-text table of runs' metrics."""
        raise NotImplementedError

    def explain(self, queries: "RunQueries", query: str, out: Path, picture: Path | None = None,
                item: str | None = None) -> dict[str, Any]:
        """Draw where a query lands on a picture, as the run's own figures draw it, into the PNG `out`: a typed
        phrase over `picture` ("text"), or the word number `query` of the scored item `item` over its image
        `picture` ("word"); returns what the picture shows in numbers (its peak, in picture pixels)."""
        raise NotImplementedError(f"task '{self.name}' explains no query")

    def explain_items(self, run_dir: Path, n: int) -> list[dict[str, Any]]:
        """Up to n items whose words `explain` draws ("word"): {"clip_id", "words": [(number, word), ...]}."""
        return []

    def report_rows(self, run_dir: Path, metrics: dict[str, Any], info: dict[str, Any]) -> list[Row]:
        """The rows of `pipeline report` for one run directory: a train run's own row; for an evaluate stage's
        table, a row per model it applied that was trained on another dataset (`model_dataset`)."""
        if "runs" not in metrics:
            return [self.report_row(run_row(run_dir, metrics, info, self.name), metrics, info)]
        rows = []
        for name, m in (metrics.get("runs") or {}).items():
            if not m.get("model_dataset"):
                continue
            trained = Path(m.get("run", "")) / "params.yaml"
            ups = (yaml.safe_load(trained.read_text()).get("upstream") or {}) if trained.is_file() else {}
            rows.append({"dataset": info["dataset"], "stage": f"{name} ({info['stage']})",
                         "implementation": m["implementation"], "params": dict(info["params"]),
                         "random_weights": any(v.get("random_weights") for v in ups.values()),
                         "features": f"model trained on {m['model_dataset']} ({features_text(ups)})",
                         "completed": metrics.get("completed", 0.0), "run_dir": str(run_dir / name),
                         "task": self.name, "metrics": m, "plot": run_dir / self.plot_file})
        return rows

    def report_row(self, row: Row, metrics: dict[str, Any], info: dict[str, Any]) -> Row:
        """A train run's row: the common fields (`sections.run_row`) and what the task's sections read."""
        return {**row, "plot": Path(row["run_dir"]) / self.plot_file}






def annotations_digest(ctx: "Context") -> dict[str, str]:
    """Split -> content digest of the dataset's annotation files (COCO instances: 160 MB, hashed once and memoized)."""
    from ..cache import DigestMemo
    from ..context import cache_paths

    assert ctx.manifest is not None
    memo = DigestMemo(cache_paths(ctx.config.cache)["digests"])
    return {s: memo.digest(p) for s, p in sorted(ctx.manifest.annotations.items())}





