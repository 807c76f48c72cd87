"""Trainers (one module each, registered in `pipeline.registry.TRAINERS`), losses and retrieval metrics."""
from . import alignment, cca, cluster_cca, dsve, metrics, shr, tnn_ccca, vase, vgs  # noqa: F401  (registers the trainers and evaluators)
