"""Extract throughput per extractor: our pipeline (sharded, threaded decode, worker processes, clips
batched through the model, stores written) against a plain per-clip loop (decode one clip, compute
it alone, next) on the same clips, in one run.

    .venv/bin/python benchmarks/extract.py                       # all extractors, CPU
    .venv/bin/python benchmarks/extract.py --extractors logmel --clips 48 --duration 4
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

STAGES = {
    "audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000}},
    "logmel": {"group": "extract", "implementation": "logmel", "upstream": ["audio"], "params": {"preset": "vggish"}},
    "vggish": {"group": "extract", "implementation": "vggish", "upstream": ["audio"],
               "params": {"weights": "random:0"}, "execution": {"workers": 1}},
    "vgg16": {"group": "extract", "implementation": "vgg16", "params": {"weights": "random:0", "fps": 1.0},
              "execution": {"workers": 1}},
    "inception_v3": {"group": "extract", "implementation": "inception_v3",
                     "params": {"weights": "random:0", "fps": 1.0}, "execution": {"workers": 1}},
}


def naive(name: str, clips: list) -> float:
    """Decode, then compute, one clip at a time; timed from nothing like ours (model built once)."""
    import extractors  # noqa: F401
    from pipeline.config import ExecutionParams
    from pipeline.media import decode_audio
    from pipeline.registry import EXTRACTORS

    t0 = time.perf_counter()
    spec = STAGES[name]
    cls = EXTRACTORS.get(spec["implementation"])
    ex = cls(cls.Config(**spec["params"]), ExecutionParams(device="cpu"))
    audio = spec.get("upstream") == ["audio"]

    def one(clip):
        x = decode_audio(clip.media["video"], 16000) if audio else ex.load(clip)
        ex.compute([x], {"sample_rate": 16000})

    for c in clips:
        one(c)
    return time.perf_counter() - t0


def ours(name: str, cfg_path: Path) -> float:
    """`pipeline run extract --stage NAME` with the stages' own execution settings, from an empty cache."""
    from pipeline.runner import run

    t0 = time.perf_counter()
    reports = run("extract", stage=name, config=cfg_path, device="cpu")
    elapsed = time.perf_counter() - t0
    assert all(not r.failed for r in reports), reports
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extractors", default="logmel,vggish,vgg16,inception_v3")
    ap.add_argument("--clips", type=int, default=48, help="total clips (8 classes)")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per clip")
    ap.add_argument("--workers", type=int, default=2, help="workers of the decode/DSP stages (audio, logmel)")
    args = ap.parse_args()

    from pipeline.config import load_config
    from pipeline.runner import make_adapter

    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    params = {"n_classes": 8, "clips_per_class": max(1, args.clips // 8), "duration": args.duration, "seed": 0}
    cfg_path = tmp / "stages.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "cache": str(tmp / "cache"), "default_dataset": "bench",
        "execution": {"workers": args.workers, "shard_size": 8, "progress": False, "batch_size": 32},
        "datasets": {"bench": {"adapter": "synthetic", "root": str(tmp / "data"), "params": params}},
        "stages": STAGES}))
    adapter = make_adapter(load_config(cfg_path), None)
    adapter.prepare()
    clips = adapter.manifest().clips
    n = len(clips)

    rows = []
    for name in args.extractors.split(","):
        t_naive = naive(name, clips)
        import shutil

        shutil.rmtree(tmp / "cache", ignore_errors=True)  # ours pays for its upstream stage too
        t_ours = ours(name, cfg_path)
        rows.append((name, t_naive, t_ours))

    print(f"{n} clips x {args.duration:g} s (visual: 1 fps), CPU; audio/logmel: {args.workers} workers, "
          "CNN stages: 1 worker using every core; random weights (throughput only)")
    print(f"{'extractor':<14}{'per-clip loop':>16}{'pipeline':>12}{'ratio':>8}")
    for name, a, b in rows:
        print(f"{name:<14}{n / a:>11.2f} c/s{n / b:>8.2f} c/s{a / b:>7.2f}x")


if __name__ == "__main__":
    main()
