"""`pipeline serve`'s nearest-neighbour search: the latency of one query against 10k and 1M synthetic embeddings,
exact (memory-mapped, blocked) beside faiss IVF (what serve uses above 100k rows), with IVF's recall@10 against
exact, in one run.

    .venv/bin/python benchmarks/serve.py                       # 10k and 1M rows of 256 dims
    .venv/bin/python benchmarks/serve.py --sizes 10000 --dim 512
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._smoke import parse  # noqa: E402
from pipeline.serve.index import VectorIndex, normalize  # noqa: E402


def clustered(n: int, dim: int, rng: np.random.Generator, out: Path) -> Path:
    """n l2-normalised rows around 1000 centres (as trained embeddings cluster), written in blocks to a .npy."""
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, dim))
    for a in range(0, n, 100_000):
        m = min(100_000, n - a)
        arr[a:a + m] = normalize(centres[rng.integers(0, 1000, m)] + 0.7 * rng.standard_normal((m, dim)).astype(np.float32))
    arr.flush()
    return out


def timed(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Median milliseconds of one query at a time, and every query's top k."""
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        i, _ = index.search(q, k)
        times.append(time.perf_counter() - t)
        found.append(i[0])
    return 1000 * float(np.median(times)), np.array(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    args = parse(ap, sizes=[2000, 20000], dim=64, queries=5)
    rng = np.random.default_rng(0)
    try:
        import faiss  # noqa: F401
        have_faiss = True
    except ImportError:
        have_faiss = False
        print("faiss is not installed (pip install 'avpipeline[ann]'): exact search only")
    print(f"{'rows':>9} {'dim':>4} {'exact ms/query':>15} {'IVF ms/query':>13} {'exact/IVF':>10} "
          f"{'IVF recall@10':>14} {'IVF build s':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = clustered(n, args.dim, rng, Path(tmp) / f"v{n}.npy")
            ids = [str(i) for i in range(n)]
            queries = normalize(np.load(path, mmap_mode="r")[rng.integers(0, n, args.queries)]
                                + 0.3 * rng.standard_normal((args.queries, args.dim)).astype(np.float32))
            exact = VectorIndex.from_file(path, ids, exact_limit=n)
            timed(exact, queries[:2], args.k)  # page the rows in once, as a running server has them
            t_exact, top_exact = timed(exact, queries, args.k)
            row = f"{n:>9} {args.dim:>4} {t_exact:>15.2f}"
            if have_faiss:
                t = time.perf_counter()
                ivf = VectorIndex.from_file(path, ids, exact_limit=0)
                build = time.perf_counter() - t
                t_ivf, top_ivf = timed(ivf, queries, args.k)
                recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(top_exact, top_ivf)])
                row += f" {t_ivf:>13.2f} {t_exact / t_ivf:>9.1f}x {recall:>14.3f} {build:>12.1f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
