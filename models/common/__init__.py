"""What the methods share: items and views, the trainer base, the epoch loop, losses, retrieval metrics (and their
evaluators), text, SRU and picture fine-tuning."""
from . import metrics, tasks  # noqa: F401  (registers the shared evaluators and tasks)
