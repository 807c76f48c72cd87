"""MAP on one 5000 x 5000 similarity matrix: our vectorised `mean_average_precision` against the
per-query loop of the TNN-C-CCA evaluation (argsort each row, walk its ranks in Python), in one run.

    .venv/bin/python benchmarks/metrics.py
    .venv/bin/python benchmarks/metrics.py --n 2000 --classes 28
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._smoke import parse  # noqa: E402
from models.common.metrics import mean_average_precision  # noqa: E402


def per_query_loop(sim: np.ndarray, q: np.ndarray, g: np.ndarray) -> float:
    """The reference: one query at a time, one rank at a time (stable sort: ties by gallery order)."""
    aps = []
    for i in range(sim.shape[0]):
        order = np.argsort(-sim[i], kind="stable")
        hits, total = 0, 0.0
        for rank, j in enumerate(order, 1):
            if g[j] == q[i]:
                hits += 1
                total += hits / rank
        aps.append(total / hits if hits else 0.0)
    return float(np.mean(aps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5, help="best of N for the vectorised side")
    args = parse(ap, n=300, repeat=1)
    rng = np.random.default_rng(0)
    # cosine similarities of embeddings with some class structure, as a trained model gives
    labels = rng.integers(0, args.classes, args.n)
    centres = rng.standard_normal((args.classes, 64))
    a = centres[labels] + 2.0 * rng.standard_normal((args.n, 64))
    v = centres[labels] + 2.0 * rng.standard_normal((args.n, 64))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sim = (a @ v.T).astype(np.float32)

    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        ours = mean_average_precision(sim, labels, labels)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    ref = per_query_loop(sim, labels, labels)
    t_ref = time.perf_counter() - t
    t_ours = min(times)
    print(f"similarity {args.n} x {args.n} float32, {args.classes} classes; MAP = {ours:.6f} "
          f"(chance ~ {1 / args.classes:.3f})")
    print(f"{'method':<28}{'seconds':>10}")
    print(f"{'per-query loop':<28}{t_ref:>10.3f}")
    print(f"{'vectorised (best of ' + str(args.repeat) + ')':<28}{t_ours:>10.3f}")
    print(f"ratio {t_ref / t_ours:.1f}x; |difference| = {abs(ours - ref):.2e} (must be <= 1e-9)")
    if abs(ours - ref) > 1e-9:
        raise SystemExit("vectorised MAP differs from the per-query loop")


if __name__ == "__main__":
    main()
