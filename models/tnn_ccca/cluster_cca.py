"""Cluster-CCA (Rasiwasia et al., 2014) as TNN-C-CCA uses it, from per-class sums.

The cluster cross-covariance pairs every audio item with every visual item of its class:
    Sxy_cluster = sum_c sum_{i in c} sum_{j in c} x_i y_j^T / sum_c n_c^2
                = sum_c (sum_{i in c} x_i)(sum_{j in c} y_j)^T / sum_c n_c^2,
so it costs one pass over the data (class sums) instead of sum_c n_c^2 materialised pairs. It is
mixed with the paired cross-covariance, Sxy = beta * Sxy_paired + (1 - beta) * Sxy_cluster, and
solved like CCA (whiten, SVD, keep k). beta = 1 is plain regularised CCA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.common.base import TrainConfig
from models.tnn_ccca.cca import LinearTrainer, _device, _Projection, check_views, covariances, solve_cca
from pipeline.registry import register_trainer


def class_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample its class index 0..C-1, and the class sizes (any hashable labels)."""
    classes, inverse, counts = np.unique(np.asarray(labels).reshape(-1), return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def cluster_cross_covariance(xc: Any, yc: Any, labels: np.ndarray) -> Any:
    """sum over classes of all within-class (x_i, y_j) pairs, / sum n_c^2, from class sums."""
    import torch

    inverse, counts = class_index(labels)
    idx = torch.as_tensor(inverse, device=xc.device)
    sx = torch.zeros(len(counts), xc.shape[1], dtype=xc.dtype, device=xc.device).index_add_(0, idx, xc)
    sy = torch.zeros(len(counts), yc.shape[1], dtype=yc.dtype, device=yc.device).index_add_(0, idx, yc)
    return sx.T @ sy / float(np.sum(counts.astype(np.float64) ** 2))


class ClusterCCA(_Projection):
    """Cluster-CCA: CCA whose cross-covariance also pairs all same-class items across the views."""

    def __init__(self, n_components: int = 10, beta: float = 0.2, reg: float = 1e-4, device: str = "auto") -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        self.n_components, self.beta, self.reg, self.device = n_components, beta, reg, device

    def fit(self, x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> "ClusterCCA":
        """Learn the projections from paired rows of X and Y and each row's class label."""
        x, y = check_views(x, y, self.n_components)
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != x.shape[0]:
            raise ValueError(f"labels must have one entry per row ({x.shape[0]}), got {len(labels)}")
        xc, yc, mx, my, sxx, syy, paired = covariances(x, y, self.reg, _device(self.device))
        sxy = paired if self.beta == 1.0 else (
            self.beta * paired + (1.0 - self.beta) * cluster_cross_covariance(xc, yc, labels))
        self._fit_done(mx, my, *solve_cca(sxx, syy, sxy, self.n_components))
        return self


def naive_cluster_cross_covariance(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The same matrix by materialising every within-class pair (the reference; O(sum n_c^2) memory)."""
    x = np.asarray(x, np.float64) - np.mean(x, axis=0)
    y = np.asarray(y, np.float64) - np.mean(y, axis=0)
    labels = np.asarray(labels).reshape(-1)
    xs, ys = [], []
    for c in np.unique(labels):
        i = np.flatnonzero(labels == c)
        a, b = np.meshgrid(i, i, indexing="ij")
        xs.append(x[a.ravel()])
        ys.append(y[b.ravel()])
    px, py = np.concatenate(xs), np.concatenate(ys)
    return px.T @ py / len(px)


@dataclass
class ClusterCCAConfig(TrainConfig):
    n_components: int = 10
    beta: float = 0.2
    reg: float = 1e-4

    def __post_init__(self) -> None:
        if self.n_components < 1 or self.reg < 0 or not 0 <= self.beta <= 1:
            raise ValueError("need n_components >= 1, reg >= 0 and 0 <= beta <= 1, "
                             f"got {self.n_components}, {self.reg} and {self.beta}")


@register_trainer
class ClusterCCATrainer(LinearTrainer):
    """Cluster-CCA of the audio and visual clip vectors, clusters = class labels."""

    name = "cluster_cca"
    VERSION = 1
    Config = ClusterCCAConfig

    def __init__(self, config: Any = None, device: str = "auto") -> None:
        super().__init__(config, device)
        self.model = ClusterCCA(self.config.n_components, self.config.beta, self.config.reg, device)

    def _fit(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> None:
        self.model.fit(audio, visual, labels)
