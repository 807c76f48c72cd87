"""What a run tells its caller on the way (`RunEvents`): progress, waits, each stage's plan, skips, epochs, notices."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import StageReport

log = logging.getLogger("pipeline.runner")  # the runner's logger: what a run logs keeps the name it always had


class RunEvents:
    """The listener of one `pipeline.runner.run`; override the methods you want to hear. The defaults are what a
    run does with no listener: a notice is logged as a warning, a skip as info, and the rest say nothing (a wait is
    logged where it happens)."""

    def progress(self, n: int) -> None:
        """A shard was committed, holding `n` clips (computed or failed)."""

    def wait(self, message: str) -> None:
        """The run waits for a lock that another run holds; `message` says which."""

    def plan(self, report: StageReport, n_compute: int) -> None:
        """A feature stage starts: what it reuses (`report`) and how many rows it computes (0: it is up to date)."""

    def skip(self, stage: str, why: str) -> None:
        """A stage of the group does not apply to the dataset, for reason `why`."""
        log.info("stage '%s' skipped: %s", stage, why)

    def epoch(self, stage: str, epoch: int, total: int, what: str, score: float) -> None:
        """A train stage ended epoch `epoch` of `total`, with validation score `what` at `score`."""

    def notice(self, message: str) -> None:
        """What the run found and did on the way (damaged shards recomputed, dataset entries skipped)."""
        log.warning("%s", message)
