"""VGS alignment (khazarkhorrami/VGS_alignment): visually grounded speech with cross-modal attention; its
`localization` task and the `alignment` evaluator (alignment and glancing scores)."""
from . import alignment, task, trainer  # noqa: F401  (registers the trainer, task and evaluator)
