"""Trainers (one module each, registered in `pipeline.registry.TRAINERS`), losses and retrieval metrics."""
from . import cca, cluster_cca, metrics, tnn_ccca, vase  # noqa: F401  (registers the trainers and evaluators)
