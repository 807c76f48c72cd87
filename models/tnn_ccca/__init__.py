"""TNN-C-CCA (ZenzenDatabase/CMR): triplet networks with Cluster-CCA on top, and its linear baselines (CCA,
Cluster-CCA); scored by the shared `classes` task."""
from . import cca, cluster_cca, trainer  # noqa: F401  (registers the trainers)
