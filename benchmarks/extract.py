"""Extract throughput per extractor: our pipeline (sharded, threaded decode, worker processes, clips
batched through the model, stores written) against a plain per-clip loop (decode one clip, compute
it alone, next) on the same clips, in one run.

    .venv/bin/python benchmarks/extract.py                       # all extractors, CPU
    .venv/bin/python benchmarks/extract.py --extractors logmel --clips 48 --duration 4
"""
from __future__ import annotations

import argparse
import shutil
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


def model_only(name: str, device: str, batch: int, seconds: float = 5.0) -> float:
    """Frames (or examples) per second of the model alone on `device`, inputs already there."""
    import torch

    import extractors  # noqa: F401
    from extractors import _torch
    from pipeline.config import ExecutionParams
    from pipeline.registry import EXTRACTORS

    spec = STAGES[name]
    cls = EXTRACTORS.get(spec["implementation"])
    ex = cls(cls.Config(**spec["params"]), ExecutionParams(device=device, batch_size=batch))
    if name == "vggish":
        model, dev = ex._torch_model
        x = torch.randn(batch, 1, 96, 64, device=dev)
    else:
        model, _, dev = ex._runtime
        x = torch.randn(batch, 3, ex.crop_size, ex.crop_size, device=dev)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _torch._autocast(dev):
        model(x)  # warm-up (kernel selection, allocator) outside the timing
        if dev.type == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3 * batch:
            model(x)
            n += batch
            if dev.type == "cuda":
                torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extractors", default="logmel,vggish,vgg16,inception_v3")
    ap.add_argument("--clips", type=int, default=48, help="total clips (8 classes)")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per clip")
    ap.add_argument("--workers", type=int, default=2, help="workers of the decode/DSP stages (audio, logmel)")
    ap.add_argument("--device", default="auto", help="device for the model-only vs end-to-end table")
    ap.add_argument("--batch-size", type=int, default=32)
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
    cache_root = load_config(cfg_path).cache  # $PIPELINE_CACHE, if set, wins over the file's `cache:`
    adapter = make_adapter(load_config(cfg_path), None)
    adapter.prepare()
    clips = adapter.manifest().clips
    n = len(clips)

    rows = []
    for name in args.extractors.split(","):
        t_naive = naive(name, clips)
        shutil.rmtree(cache_root, ignore_errors=True)  # ours pays for its upstream stage too
        t_ours = ours(name, cfg_path)
        rows.append((name, t_naive, t_ours))

    print(f"{n} clips x {args.duration:g} s (visual: 1 fps), CPU; audio/logmel: {args.workers} workers, "
          "CNN stages: 1 worker using every core; random weights (throughput only)")
    print(f"{'extractor':<14}{'per-clip loop':>16}{'pipeline':>12}{'ratio':>8}")
    for name, a, b in rows:
        print(f"{name:<14}{n / a:>11.2f} c/s{n / b:>8.2f} c/s{a / b:>7.2f}x")

    from extractors._torch import pick_device
    from pipeline.runner import run

    device = pick_device(args.device)
    label = torch_device_name(device)
    print(f"\nend-to-end vs model-only on {label} (frames for CNNs, 0.96 s examples for vggish)")
    print(f"{'extractor':<14}{'end-to-end':>14}{'model-only':>14}{'share':>8}")
    for name in [x for x in args.extractors.split(",") if x in ("vggish", "vgg16", "inception_v3")]:
        shutil.rmtree(cache_root, ignore_errors=True)
        t0 = time.perf_counter()
        reports = run("extract", stage=name, config=cfg_path, device=str(device), batch_size=args.batch_size)
        elapsed = time.perf_counter() - t0
        import pipeline

        rows_out = len(pipeline.open_store(reports[-1].store_path).to_dask())
        e2e, alone = rows_out / elapsed, model_only(name, str(device), args.batch_size)
        print(f"{name:<14}{e2e:>10.1f} f/s{alone:>10.1f} f/s{e2e / alone:>7.0%}")


def torch_device_name(device: object) -> str:
    import torch

    if getattr(device, "type", "") == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return "CPU"


if __name__ == "__main__":
    main()
