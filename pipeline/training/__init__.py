"""The training layer: one mechanism for every method.

- `models.common.items.View` / `Items`: a trainer's named inputs (modality + form) and the items it sees;
  `views.read_items` reads them from the upstream stores and the manifest.
- `tasks`: the task contract (what the items are and how they are scored: which items qualify, the units, the
  metrics, table, plot and report sections); the tasks themselves live with the methods under models/.
- `sections`: what `pipeline report` shows of a task's runs (rows, a terminal table, an HTML section, charts).
- `keys`: each run stage's key, run directory, task and view bindings; what does not apply; status.
- `run`: the one run loop (lock, resume, units, final model, embedding stores, metrics.json last).
- `models.common.loop.EpochTrainer`: the one epoch loop of torch trainers (checkpoints, selection, autocast).

The runner knows none of this: it asks `resolve_runs` for the run stages and calls `run_training_stage`.
"""
from .base import RunKeys, RunReport, TrainError, is_run_stage, task_name
from .keys import resolve_runs, run_status
from .run import load_trainer, run_training_stage, trainer_for

__all__ = ["RunKeys", "RunReport", "TrainError", "is_run_stage", "load_trainer", "resolve_runs",
           "run_status", "run_training_stage", "task_name", "trainer_for"]
