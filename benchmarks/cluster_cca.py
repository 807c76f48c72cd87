"""Cluster-CCA: our class-sum cross-covariance against the naive computation that materialises
every within-class pair (as the TNN-C-CCA code does), on the same data, in one run; then ours alone
at larger sizes.

    .venv/bin/python benchmarks/cluster_cca.py
    .venv/bin/python benchmarks/cluster_cca.py --n-naive 2000 --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from benchmarks._smoke import parse  # noqa: E402
from models.tnn_ccca.cca import _device as model_device  # noqa: E402
from models.tnn_ccca.cluster_cca import ClusterCCA, naive_cluster_cross_covariance  # noqa: E402


def data(n: int, dx: int, dy: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two views with a class-dependent shared part, as clip-level features are."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    z = rng.standard_normal((classes, 16))[labels] + 0.5 * rng.standard_normal((n, 16))
    x = z @ rng.standard_normal((16, dx)) + rng.standard_normal((n, dx))
    y = z @ rng.standard_normal((16, dy)) + rng.standard_normal((n, dy))
    return x, y, labels


def naive_fit(x: np.ndarray, y: np.ndarray, labels: np.ndarray, k: int, beta: float, reg: float) -> np.ndarray:
    """The reference, all numpy as the TNN-C-CCA code does it: covariances, the cluster term from
    materialised pairs, eig-based S^-1/2 whitening, SVD; returns the k correlations."""
    m = len(x)
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx = xc.T @ xc / (m - 1) + reg * np.eye(x.shape[1])
    syy = yc.T @ yc / (m - 1) + reg * np.eye(y.shape[1])
    sxy = beta * (xc.T @ yc / (m - 1)) + (1 - beta) * naive_cluster_cross_covariance(x, y, labels)

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(c)
        return (v * w ** -0.5) @ v.T

    return np.linalg.svd(inv_sqrt(sxx) @ sxy @ inv_sqrt(syy), compute_uv=False)[:k]


def best_of(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-naive", type=int, default=3000)
    ap.add_argument("--n-large", type=int, default=20000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--repeat", type=int, default=5)
    args = parse(ap, n_naive=300, n_large=600, device="cpu", repeat=1)
    k, beta, reg = 10, 0.2, 1e-4

    x, y, labels = data(args.n_naive, 128, 128, args.classes)
    pairs = int(np.sum(np.unique(labels, return_counts=True)[1].astype(np.int64) ** 2))
    t_naive, ref = best_of(lambda: naive_fit(x, y, labels, k, beta, reg), 1)
    model = ClusterCCA(k, beta, reg, device=args.device)
    t_ours, _ = best_of(lambda: model.fit(x, y, labels), args.repeat)
    diff = float(np.abs(model.correlations_ - ref).max())
    print(f"n = {args.n_naive}, {args.classes} classes, 128 / 128 dims, k = {k}, beta = {beta}, device {args.device}")
    print(f"{'method':<44}{'seconds':>10}")
    print(f"{'naive (' + format(pairs, ',') + ' materialised pairs)':<44}{t_naive:>10.3f}")
    print(f"{'ours: class sums (best of ' + str(args.repeat) + ')':<44}{t_ours:>10.4f}")
    print(f"ratio {t_naive / t_ours:.0f}x; max |correlation difference| = {diff:.1e} (must be <= 1e-6)")
    print(f"top correlations: {np.array2string(model.correlations_[:4], precision=4)}")
    if diff > 1e-6:
        raise SystemExit("class-sum Cluster-CCA differs from the materialised-pair reference")

    print(f"\nours alone (best of {args.repeat}):")
    for n, dx, dy in ((args.n_large, 128, 128), (args.n_large, 128, 2048)):
        x, y, labels = data(n, dx, dy, args.classes, seed=1)
        model = ClusterCCA(k, beta, reg, device=args.device)
        t, _ = best_of(lambda: model.fit(x, y, labels), args.repeat)  # noqa: B023 (called at once)
        note = "  (target < 0.15 s on 2 cores)" if (dx, dy) == (128, 128) else ""
        if dy > 512:  # what no algorithm avoids: the wide view's own covariance, one float64 GEMM
            yt = torch.as_tensor(y - y.mean(0), dtype=torch.float64, device=model_device(args.device))
            t_cov, _ = best_of(lambda: yt.T @ yt, 3)  # noqa: B023 (called at once)
            note = f"  (of which the {dy} x {dy} covariance alone, one float64 GEMM: {t_cov:.3f} s)"
        print(f"  n = {n}, {dx} / {dy} dims: {t:.3f} s{note}")


if __name__ == "__main__":
    main()
