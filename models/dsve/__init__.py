"""DSVE-loc (technicolor-research/dsve-loc): semantic-visual embedding with WELDON pooling; its `grounding` task
(pointing game, phrase segmentation) and heatmaps."""
from . import task, trainer  # noqa: F401  (registers the trainer, task and evaluators)
