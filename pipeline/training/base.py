"""What the training layer passes around: a run's keys (`RunKeys`), what it did (`RunReport`), its errors."""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import EVALUATORS, TASKS, TRAINERS
from ..store import _atomic_write_text


class TrainError(RuntimeError):
    """A train or evaluate stage cannot run; the message says what to do."""


@dataclass
class RunKeys:
    """What identifies one train/evaluate stage's run for one dataset."""

    name: str
    implementation: str
    kind: str  # "train" or "evaluate"
    params: dict[str, Any]
    key: str
    run_dir: Path
    task: str  # the registered task it learns or scores
    views: dict[str, str] = field(default_factory=dict)  # view name -> upstream feature stage (train)
    upstream_runs: list[str] = field(default_factory=list)  # train stages an evaluate stage reads
    init_from: str | None = None  # a train stage whose model this one starts from (fine-tuning)
    foreign: dict[str, "RunKeys"] = field(default_factory=dict)  # evaluate: upstream runs of `model_dataset`
    local: dict[str, "RunKeys"] = field(default_factory=dict)  # ... and their views bound to this dataset


@dataclass
class RunReport:
    """What a train/evaluate stage did: reused or trained, its metrics, where the run lives."""

    name: str
    kind: str
    run_dir: Path
    reused: bool
    units_trained: int = 0  # folds (or splits) trained in this run
    units_reused: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def task(self) -> str:
        return task_name(self.metrics.get("task"))


def atomic_json(path: Path, obj: Any) -> None:
    """Write JSON under a temporary name, then rename: a reader never sees half a file."""
    _atomic_write_text(path, json.dumps(obj, indent=2))


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save under a temporary name, then rename."""
    import torch

    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_npz(path: Path, arrays: dict[str, Any]) -> None:
    """np.savez of named arrays (an unfinished file: the caller writes under a temporary name and renames)."""
    import numpy as np

    np.savez(path, **arrays)


def task_name(value: Any) -> str:
    """A run's task as its metrics.json records it, under the name the task is registered as now (a task's
    `aliases` hold the names older runs wrote)."""
    value = value or ""
    if value in TASKS:
        return str(value)
    found = [n for n in TASKS.names() if value in vars(TASKS.get(n)).get("aliases", ())]  # not inherited
    if not found:
        raise TrainError(f"runs of task '{value}' cannot be read: no registered task is called so; known: "
                         f"{', '.join(TASKS.names())}")
    return found[0]


def is_run_stage(impl: Any) -> bool:
    """True for trainers and evaluators (stages that write a run directory, not a feature store)."""
    name = getattr(impl, "name", None)
    return isinstance(name, str) and any(name in reg and reg.get(name) is impl for reg in (TRAINERS, EVALUATORS))
