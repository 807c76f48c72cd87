"""The training layer: one mechanism for every method.

- `models.common.items.View` / `Items`: a trainer's named inputs (modality + form) and the items it sees;
  `views.read_items` reads them from the upstream stores and the manifest.
- `tasks`: what the items are and how they are scored (`classes`, `pairs`; a `localization` task
  registers the same way): which items qualify, the units (folds or split), the metrics, table and plot.
- `keys`: each run stage's key, run directory, task and view bindings; what does not apply; status.
- `run`: the one run loop (lock, resume, units, final model, embedding stores, metrics.json last).
- `models.common.loop.EpochTrainer`: the one epoch loop of torch trainers (checkpoints, selection, autocast).

The runner knows none of this: it asks `resolve_runs` for the run stages and calls `run_stage`.
"""
from .base import RunKeys, RunReport, TrainError, is_run_stage, task_name
from .keys import resolve_runs, run_status
from .run import load_trainer, run_stage, trainer_for

__all__ = ["RunKeys", "RunReport", "TrainError", "is_run_stage", "load_trainer", "resolve_runs",
           "run_stage", "run_status", "task_name", "trainer_for"]
