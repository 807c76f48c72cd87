"""Extract-stage throughput: our pipeline (sharded, threaded decode, worker processes, store writes)
against a plain per-clip loop (decode, then compute, one clip at a time) on the same clips.

    .venv/bin/python benchmarks/extract.py --clips 48 --duration 4 --preset vggish
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=48, help="total clips (spread over 8 classes)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per clip")
    ap.add_argument("--preset", default="vggish", choices=["vggish", "davenet", "vgs"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", default=None, help="where to keep the generated clips (default: a temp dir)")
    args = ap.parse_args()

    from extractors.logmel import LogMel, LogMelConfig
    from pipeline.media import decode_audio
    from pipeline.runner import run

    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    n_classes = 8
    per_class = max(1, args.clips // n_classes)
    params = {"n_classes": n_classes, "clips_per_class": per_class, "duration": args.duration, "seed": 0}
    root = Path(args.data) if args.data else tmp / "data"
    cfg = tmp / "stages.yaml"
    cfg.write_text(yaml.safe_dump({
        "cache": str(tmp / "cache"), "default_dataset": "bench",
        "execution": {"workers": args.workers, "shard_size": 8, "progress": False},
        "datasets": {"bench": {"adapter": "synthetic", "root": str(root), "params": params}},
        "stages": {"audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000}},
                   "logmel": {"group": "extract", "implementation": "logmel", "upstream": ["audio"],
                              "params": {"preset": args.preset}}}}))
    from pipeline.config import load_config
    from pipeline.runner import make_adapter

    adapter = make_adapter(load_config(cfg), None)
    adapter.prepare()
    clips = adapter.manifest().clips
    n = len(clips)

    ex = LogMel(LogMelConfig(preset=args.preset))
    ex.compute([decode_audio(clips[0].media["video"], 16000)])  # warm caches (mel matrices) for both sides
    t0 = time.perf_counter()
    for c in clips:
        ex.compute([decode_audio(c.media["video"], 16000)])
    naive = time.perf_counter() - t0

    t0 = time.perf_counter()
    reports = run("extract", config=cfg)
    ours = time.perf_counter() - t0
    assert all(r.computed == n for r in reports), reports
    t0 = time.perf_counter()
    run("extract", config=cfg)
    noop = time.perf_counter() - t0

    print(f"{n} clips x {args.duration:g} s, logmel preset={args.preset}, workers={args.workers}")
    print(f"{'method':<44}{'seconds':>9}{'clips/s':>10}")
    print(f"{'plain per-clip loop (decode, then compute)':<44}{naive:>9.2f}{n / naive:>10.1f}")
    print(f"{'pipeline run extract (audio + logmel stores)':<44}{ours:>9.2f}{n / ours:>10.1f}")
    print(f"{'pipeline run extract again (all cached)':<44}{noop:>9.2f}{n / noop:>10.1f}")
    print(f"ratio ours / naive: {naive / ours:.2f}x faster; cached rerun: {naive / noop:.0f}x faster")


if __name__ == "__main__":
    main()
