"""Regularised linear CCA, and the whitening + SVD solver that Cluster-CCA shares with it.

All math is float64 in torch, on the GPU when there is one (`device="auto"`), else on the CPU;
inputs and outputs are numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.common.base import ClipVectorTrainer, TrainConfig, arrays, tensors
from pipeline.registry import register_trainer


def _device(name: str) -> Any:
    import torch

    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def as_tensor(x: np.ndarray | Any, device: Any) -> Any:
    """A float64 torch tensor on `device` from a numpy array (or tensor) of any float dtype."""
    import torch

    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x,
                           dtype=torch.float64, device=device)


def _cholesky(c: Any) -> Any:
    """Lower Cholesky factor of a covariance, or a clear error when it is not positive definite."""
    import torch

    low, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:
        raise ValueError("a covariance is not positive definite; raise `reg` (e.g. reg=1e-3)")
    return low


def solve_cca(sxx: Any, syy: Any, sxy: Any, k: int) -> tuple[Any, Any, Any]:
    """Projections (Wx, Wy) and canonical correlations of given covariances, by whitening + SVD.

    With Cholesky factors Sxx = Lx Lx^T and Syy = Ly Ly^T: U S V^T = Lx^-1 Sxy Ly^-T, Wx = Lx^-T U_k,
    Wy = Ly^-T V_k. This is the same solution as whitening with Sxx^-1/2 (the reference code's eig
    route; canonical directions do not depend on the whitening) at a fraction of the cost for wide
    views. Each pair of columns gets the sign that makes Wx's largest-magnitude entry positive, so
    results are reproducible across devices and LAPACK builds."""
    import torch
    from torch.linalg import solve_triangular

    lx, ly = _cholesky(sxx), _cholesky(syy)
    a = solve_triangular(lx, sxy, upper=False)  # Lx^-1 Sxy
    t = solve_triangular(ly, a.T, upper=False).T  # Lx^-1 Sxy Ly^-T
    u, s, vh = torch.linalg.svd(t, full_matrices=False)
    wx = solve_triangular(lx.T, u[:, :k], upper=True)
    wy = solve_triangular(ly.T, vh[:k].T, upper=True)
    idx = wx.abs().argmax(dim=0)
    sign = torch.sign(wx[idx, torch.arange(wx.shape[1], device=wx.device)])
    sign[sign == 0] = 1
    return wx * sign, wy * sign, s[:k]


def check_views(x: np.ndarray, y: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 2-D arrays with the same rows and enough dims for `n_components`, or a clear error."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"X and Y must be 2-D [n_samples, dims], got {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must have the same rows (paired samples), got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 samples to estimate covariances")
    most = min(x.shape[1], y.shape[1])
    if not 1 <= n_components <= most:
        raise ValueError(f"n_components must be in 1..{most} (the smaller view's dims), got {n_components}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("X or Y holds NaN or inf; check the features (failed clips?)")
    return x, y


class _Projection:
    """Shared state and transform of the linear CCA family."""

    n_components: int
    device: str

    def _fit_done(self, mx: Any, my: Any, wx: Any, wy: Any, corr: Any) -> None:
        self.mean_x_, self.mean_y_ = mx.cpu().numpy(), my.cpu().numpy()
        self.wx_, self.wy_ = wx.cpu().numpy(), wy.cpu().numpy()
        self.correlations_ = corr.cpu().numpy()

    def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project both views (centred on the training means) onto the k canonical directions."""
        if not hasattr(self, "wx_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call .fit first")
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape[-1] != self.wx_.shape[0] or y.shape[-1] != self.wy_.shape[0]:
            raise ValueError(f"expected {self.wx_.shape[0]} and {self.wy_.shape[0]} dims, "
                             f"got {x.shape[-1]} and {y.shape[-1]}")
        return (x - self.mean_x_) @ self.wx_, (y - self.mean_y_) @ self.wy_

    def state_dict(self) -> dict[str, Any]:
        """Fitted arrays (numpy), for saving with torch.save / np.savez."""
        return {k: getattr(self, k) for k in ("mean_x_", "mean_y_", "wx_", "wy_", "correlations_")}

    def load_state_dict(self, state: dict[str, Any]) -> "_Projection":
        """Restore what `state_dict` returned."""
        for k, v in state.items():
            setattr(self, k, np.asarray(v))
        return self


def covariances(x: np.ndarray, y: np.ndarray, reg: float, device: Any) -> tuple[Any, ...]:
    """Centred views, their means, Sxx + reg*I, Syy + reg*I (1/(m-1)) and the paired Sxy."""
    import torch

    tx, ty = as_tensor(x, device), as_tensor(y, device)
    mx, my = tx.mean(0), ty.mean(0)
    tx, ty = tx - mx, ty - my
    m = tx.shape[0]
    sxx = tx.T @ tx / (m - 1) + reg * torch.eye(tx.shape[1], dtype=tx.dtype, device=device)
    syy = ty.T @ ty / (m - 1) + reg * torch.eye(ty.shape[1], dtype=ty.dtype, device=device)
    return tx, ty, mx, my, sxx, syy, tx.T @ ty / (m - 1)


class CCA(_Projection):
    """Linear CCA with `reg` added to the diagonal of both views' covariances."""

    def __init__(self, n_components: int = 10, reg: float = 1e-4, device: str = "auto") -> None:
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        self.n_components, self.reg, self.device = n_components, reg, device

    def fit(self, x: np.ndarray, y: np.ndarray) -> "CCA":
        """Learn the projections from paired rows of X and Y."""
        x, y = check_views(x, y, self.n_components)
        _, _, mx, my, sxx, syy, sxy = covariances(x, y, self.reg, _device(self.device))
        self._fit_done(mx, my, *solve_cca(sxx, syy, sxy, self.n_components))
        return self


@dataclass
class CCAConfig(TrainConfig):
    n_components: int = 10
    reg: float = 1e-4

    def __post_init__(self) -> None:
        if self.n_components < 1 or self.reg < 0:
            raise ValueError(f"need n_components >= 1 and reg >= 0, got {self.n_components} and {self.reg}")


class LinearTrainer(ClipVectorTrainer):
    """A trainer around one of the linear projections (`_make` builds it, `_fit` fits it)."""

    model: _Projection

    def fit_arrays(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> "LinearTrainer":
        self.fit_scaler(audio, visual)
        self._fit(self.scale(audio, "audio"), self.scale(visual, "visual"), labels)
        return self

    def _fit(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> None:
        raise NotImplementedError

    def transform(self, audio: np.ndarray, visual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model.transform(self.scale(audio, "audio"), self.scale(visual, "visual"))

    def state_dict(self) -> dict[str, Any]:
        return {"model": tensors(self.model.state_dict()), "norm": tensors(self.norm_)}

    def load_state_dict(self, state: dict[str, Any]) -> "LinearTrainer":
        self.model.load_state_dict(arrays(state["model"]))
        self.norm_ = arrays(state["norm"])
        return self


@register_trainer
class CCATrainer(LinearTrainer):
    """Regularised linear CCA of the audio and visual clip vectors (labels unused)."""

    name = "cca"
    VERSION = 1
    Config = CCAConfig

    def __init__(self, config: Any = None, device: str = "auto") -> None:
        super().__init__(config, device)
        self.model = CCA(self.config.n_components, self.config.reg, device)

    def _fit(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> None:
        self.model.fit(audio, visual)
