"""The cost of trusting a store: the cheap check every open, `status` and no-op `run` does, at 10,000 clips,
against reading the commit records without checking anything (what the store did before format 2); and
the first-read hash of each shard against reading without it. One run prints both side by side.

    .venv/bin/python benchmarks/store_check.py
    .venv/bin/python benchmarks/store_check.py --clips 10000 --shard-size 8 --stages 4 --backend hdf5
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._smoke import parse  # noqa: E402
from pipeline import store as st  # noqa: E402
from pipeline.store import verify  # noqa: E402


def unchecked_read(path: Path) -> int:
    """The pre-format-2 reader: parse every commit record, check nothing."""
    records = [json.loads(p.read_text()) for p in (path / "commits").glob("*.json")]
    return sum(len(r["clips"]) for r in records)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=10000)
    ap.add_argument("--shard-size", type=int, default=8, help="clips per shard (stages.yaml's default)")
    ap.add_argument("--rows", type=int, default=3, help="rows per clip (3 VGGish examples: a 3 s clip)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--stages", type=int, default=4, help="stores a no-op run checks (the demo DAG has 4)")
    ap.add_argument("--backend", default="zarr", choices=["zarr", "hdf5"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--share", type=int, default=5, help="items reading one row, in the shared store (5 captions)")
    args = parse(ap, clips=64, repeat=1)
    root = Path(tempfile.mkdtemp(prefix="store-check-"))
    try:
        path = root / "store"
        writer = st.StoreWriter(path, {"key": "bench", "dims": [args.dim], "dtype": "float32"}, args.backend)
        rng = np.random.default_rng(0)
        keys = {f"clip{i:06d}": f"k{i}" for i in range(args.clips)}
        ids = list(keys)
        t0 = time.perf_counter()
        for s in range(0, args.clips, args.shard_size):
            chunk = ids[s:s + args.shard_size]
            writer.write_shard(f"shard{s:06d}", [
                st.ClipResult(c, keys[c], rng.standard_normal((args.rows, args.dim)).astype(np.float32)) for c in chunk])
        n_shards = -(-args.clips // args.shard_size)
        print(f"store: {args.clips} clips in {n_shards} {args.backend} shards, [{args.rows}, {args.dim}] float32 "
              f"per clip; written in {time.perf_counter() - t0:.1f} s")

        assert unchecked_read(path) == args.clips and not st.scan_store(path, keys).is_damaged
        old = best(lambda: unchecked_read(path), args.repeat)
        cheap = best(lambda: st.scan_store(path, keys), args.repeat)
        print("\nper store                        unchecked read   cheap check   ratio")
        print(f"  parse records (+ stat files)   {old * 1e3:10.1f} ms {cheap * 1e3:10.1f} ms   {cheap / old:5.2f}x")
        total = cheap * args.stages
        verdict = "within" if total < 1.0 else "OVER"
        print(f"no-op run, {args.stages} stores: cheap checks {total:.3f} s in all ({verdict} the 1 s no-op budget)")

        for p in path.rglob("*"):  # as after a copy that did not keep mtimes: every file is hashed once
            if p.is_file():
                os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 1))
        moved = best(lambda: st.scan_store(path, keys), 1)
        print(f"  after mtimes moved (a copy without -p): {moved * 1e3:.1f} ms per store (every file hashed)")

        store = st.FeatureStore(path, keys)
        verify._VERIFIED.clear()
        t0 = time.perf_counter()
        store.clip_means()
        first = time.perf_counter() - t0
        plain = best(lambda: st.FeatureStore(path, keys).clip_means(), args.repeat)  # shards already hashed
        print(f"\nclip_means over the store: {plain:.3f} s reading, {first:.3f} s with each shard hashed on first "
              f"read ({first / plain:.2f}x)")

        # rows keyed by content: the same items read rows shared by `--share` items each (captions of one
        # picture), so the store holds clips / share rows in as many shards of the same size
        shared = root / "shared"
        w2 = st.StoreWriter(shared, {"key": "bench-shared", "dims": [args.dim], "dtype": "float32"}, args.backend)
        n_rows = -(-args.clips // args.share)
        row_keys = [f"r{i}" for i in range(n_rows)]
        for s in range(0, n_rows, args.shard_size):
            w2.write_shard(f"s{s:06d}", [st.ClipResult(k, k, rng.standard_normal((args.rows, args.dim))
                                                        .astype(np.float32)) for k in row_keys[s:s + args.shard_size]])
        items = {c: row_keys[i // args.share] for i, c in enumerate(ids)}
        st.FeatureStore(shared, items).clip_means()  # hash the shards once, as above
        t_items = best(lambda: st.FeatureStore(shared, items).clip_means(), args.repeat)
        t_noop = best(lambda: st.scan_store(shared, items), args.repeat)
        print(f"\n{args.clips} items, one row each (before)   vs   {n_rows} rows shared by {args.share} items each "
              "(rows keyed by content)")
        print(f"  clip_means over the items       {plain:8.3f} s   {t_items:8.3f} s   {t_items / plain:5.2f}x")
        print(f"  cheap check (a no-op's)         {cheap * 1e3:8.1f} ms  {t_noop * 1e3:8.1f} ms  {t_noop / cheap:5.2f}x")
        print(f"  bytes on disk                   {_bytes(path):>10,}   {_bytes(shared):>10,}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
