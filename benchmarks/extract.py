"""Extraction speed, in one run on the same clips:

1. the two media backends: the `audio` stage end to end, and the decode time of audio and of 1 fps frames;
2. per extractor: a plain per-clip loop (decode one clip, compute it alone, next) against the pipeline
   (sharded, threaded decode, worker processes, batched model, stores written) with each backend;
3. a no-op `pipeline run` and `pipeline status` (the CLI, as a user types them) on a 10,000-clip folder
   dataset, with the file count of its store;
4. end-to-end frames/s against model-only frames/s for the CNN extractors, VGGish, and CLIP (frames) and CLAP (10 s
   windows of 48 kHz audio) on --device; CLIP and CLAP as full-size random models of the published architectures
   (ViT-B/32, HTSAT + RoBERTa: transformers' default configs), saved with save_pretrained and read by path.

    .venv/bin/python benchmarks/extract.py                        # everything, CPU (~10 min on 2 cores)
    .venv/bin/python benchmarks/extract.py --only backends --audio-clips 400
    .venv/bin/python benchmarks/extract.py --only device --device cuda
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._smoke import parse  # noqa: E402

STAGES = {
    "audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000},
              "execution": {"workers": 1, "decode_threads": 4}},  # as stages.yaml
    "logmel": {"group": "extract", "implementation": "logmel", "upstream": ["audio"], "params": {"preset": "vggish"}},
    "vggish": {"group": "extract", "implementation": "vggish", "upstream": ["audio"],
               "params": {"weights": "random:0"}, "execution": {"workers": 1}},
    "vgg16": {"group": "extract", "implementation": "vgg16", "params": {"weights": "random:0", "fps": 1.0},
              "execution": {"workers": 1}},
    "inception_v3": {"group": "extract", "implementation": "inception_v3",
                     "params": {"weights": "random:0", "fps": 1.0}, "execution": {"workers": 1}},
    "audio-48k": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 48000},
                  "execution": {"workers": 1, "decode_threads": 4}},
    "clip": {"group": "extract", "implementation": "clip", "params": {"weights": "random:0", "fps": 1.0},
             "execution": {"workers": 1}},
    "clap": {"group": "extract", "implementation": "clap", "upstream": ["audio-48k"], "params": {"weights": "random:0"},
             "execution": {"workers": 1}},
}
DEVICE_ROWS = ("vggish", "vgg16", "inception_v3", "clip", "clap")
BACKENDS = ("ffmpeg", "pyav")


def project(tmp: Path, name: str, adapter: str, params: dict, workers: int) -> Path:
    """A stages.yaml with the STAGES above on one dataset; its data is prepared."""
    from pipeline.config import load_config
    from pipeline.runner import make_adapter

    cfg = tmp / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "cache": str(tmp / f"cache-{name}"), "default_dataset": name,
        "execution": {"workers": workers, "progress": False, "batch_size": 32},  # shards sized to the work
        "datasets": {name: {"adapter": adapter, "root": str(tmp / name), "params": params}},
        "stages": STAGES}))
    make_adapter(load_config(cfg), None).prepare()
    return cfg


def clips_of(cfg: Path) -> list:
    from pipeline.config import load_config
    from pipeline.runner import make_adapter

    return make_adapter(load_config(cfg), None).manifest().clips


def fresh_run(cfg: Path, stage: str, **execution: object) -> float:
    """Seconds of `pipeline run extract --stage STAGE` from an empty cache (upstream stages included)."""
    from pipeline.config import load_config
    from pipeline.runner import run

    shutil.rmtree(load_config(cfg).cache, ignore_errors=True)
    t0 = time.perf_counter()
    reports = run("extract", stage=stage, config=cfg, device="cpu", **execution)
    elapsed = time.perf_counter() - t0
    assert all(not r.failed for r in reports), [(r.name, r.failures[:2]) for r in reports]
    return elapsed


def naive(name: str, clips: list) -> float:
    """Decode, then compute, one clip at a time in this process (PyAV in-process); model built once."""
    import extractors  # noqa: F401
    from pipeline.config import ExecutionParams
    from pipeline.media import decode_audio
    from pipeline.registry import EXTRACTORS

    t0 = time.perf_counter()
    spec = STAGES[name]
    cls = EXTRACTORS.get(spec["implementation"])
    ex = cls(cls.Config(**spec["params"]), ExecutionParams(device="cpu"))
    audio = spec.get("upstream") == ["audio"]
    for clip in clips:
        x = decode_audio(clip.media["video"], 16000) if audio else ex.load(clip)
        ex.compute([x], {"sample_rate": 16000})
    return time.perf_counter() - t0


def decode_seconds(backend: str, clips: list, frames: bool) -> float:
    """Seconds to decode every clip's audio (or its frames at 1 fps) through the runner's decoder, one by one."""
    from pipeline.media import decoder

    dec = decoder(backend, 300.0, 1)
    path = clips[0].media["video"]
    dec.probe(path)  # a decoder process starts once per worker: not part of any clip's time
    t0 = time.perf_counter()
    for clip in clips:
        if frames:
            dec.decode_frames(clip.media["video"], 1.0)
        else:
            dec.decode_audio(clip.media["video"], 16000)
    return time.perf_counter() - t0


def backends_table(tmp: Path, n: int, duration: float, workers: int) -> None:
    cfg = project(tmp, "media", "synthetic", {"n_classes": 8, "clips_per_class": max(1, n // 8),
                                              "duration": duration, "seed": 0}, workers)
    clips = clips_of(cfg)
    print(f"\n## media backends: {len(clips)} clips x {duration:g} s (H.264 + AAC mp4)")
    print(f"{'what':<34}{'ffmpeg':>14}{'pyav':>14}{'ratio':>8}")
    t = {b: fresh_run(cfg, "audio", media_backend=b) for b in BACKENDS}
    print(f"{'audio stage (1 worker, 4 decoders)':<34}{len(clips) / t['ffmpeg']:>10.1f} c/s{len(clips) / t['pyav']:>10.1f} c/s"
          f"{t['ffmpeg'] / t['pyav']:>7.1f}x")
    sample = clips[: min(len(clips), 100)]
    for what, frames in (("audio decode, one clip at a time", False), ("1 fps frames, one clip at a time", True)):
        d = {b: decode_seconds(b, sample, frames) for b in BACKENDS}
        print(f"{what:<34}{1e3 * d['ffmpeg'] / len(sample):>9.1f} ms/c{1e3 * d['pyav'] / len(sample):>9.1f} ms/c"
              f"{d['ffmpeg'] / d['pyav']:>7.1f}x")


def extractor_table(tmp: Path, n: int, duration: float, workers: int, names: list[str]) -> None:
    cfg = project(tmp, "bench", "synthetic", {"n_classes": min(8, n), "clips_per_class": max(1, n // 8),
                                              "duration": duration, "seed": 0}, workers)
    clips = clips_of(cfg)
    print(f"\n## extractors: {len(clips)} clips x {duration:g} s (visual: 1 fps), CPU; audio/logmel: {workers} "
          "workers, CNN stages: 1 worker using every core; random weights (throughput only)")
    print(f"{'extractor':<14}{'per-clip loop':>16}{'pipeline ffmpeg':>18}{'pipeline pyav':>16}{'vs loop':>9}"
          f"{'vs ffmpeg':>11}")
    for name in names:
        loop = naive(name, clips)
        t = {b: fresh_run(cfg, name, media_backend=b) for b in BACKENDS}
        c = len(clips)
        print(f"{name:<14}{c / loop:>12.2f} c/s{c / t['ffmpeg']:>14.2f} c/s{c / t['pyav']:>12.2f} c/s"
              f"{loop / t['pyav']:>8.2f}x{t['ffmpeg'] / t['pyav']:>10.2f}x")


def noop_table(tmp: Path, n: int) -> None:
    """A folder dataset of `n` links to 8 short clips; the audio stage computed once; then the no-ops, timed
    as the CLI runs them (a new Python process each)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import make_clip

    src = tmp / "noop-src"
    files = [make_clip(src / f"c{i}.mp4", seconds=0.5, freq=300 + 100 * i) for i in range(8)]
    root = tmp / "noop"
    for i in range(n):
        link = root / f"class{i % 10}" / f"clip{i:05d}.mp4"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(files[i % len(files)])
    cfg = tmp / "noop.yaml"
    cfg.write_text(yaml.safe_dump({
        "cache": str(tmp / "cache-noop"), "default_dataset": "noop",
        "execution": {"workers": 2, "progress": False},
        "datasets": {"noop": {"adapter": "folder", "root": str(root)}},
        "stages": {"audio": STAGES["audio"]}}))
    cli = [sys.executable, "-m", "pipeline.cli"]
    t0 = time.perf_counter()
    subprocess.run(cli + ["run", "extract", "--config", str(cfg), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    first = time.perf_counter() - t0

    def timed(args: list[str]) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(cli + args + ["--config", str(cfg)], check=True, capture_output=True, text=True)
            best = min(best, time.perf_counter() - t)
        return best

    t_run, t_status = timed(["run", "extract"]), timed(["status"])
    store = next((tmp / "cache-noop" / "stores").glob("audio-*"))
    files_n = sum(len(f) for _, _, f in os.walk(store))
    print(f"\n## no-op at {n} clips (folder dataset of links; audio stage)")
    print(f"first run (computes the {len(files)} distinct files' rows; the links read them): {first:.1f} s; "
          f"store: {files_n} files")
    print(f"no-op `pipeline run extract`: {t_run:.2f} s; `pipeline status`: {t_status:.2f} s (best of 3, "
          "each a new process)")


def model_only(name: str, device: str, batch: int, seconds: float = 5.0) -> float:
    """Frames (or examples, or windows) per second of the model alone on `device`, inputs already there."""
    import numpy as np
    import torch

    import extractors  # noqa: F401
    from extractors import _torch
    from pipeline.config import ExecutionParams
    from pipeline.registry import EXTRACTORS

    spec = STAGES[name]
    cls = EXTRACTORS.get(spec["implementation"])
    ex = cls(cls.Config(**spec["params"]), ExecutionParams(device=device, batch_size=batch))
    if name in ("clip", "clap"):
        net, proc, dev = ex._runtime
        if name == "clip":
            side = proc.image_processor.crop_size["height"]
            inputs = {"pixel_values": torch.randn(batch, 3, side, side, device=dev)}
            fn = net.get_image_features
        else:
            rate, window = ex.audio_input
            feats = proc.feature_extractor([np.zeros(int(rate * window), np.float32)] * batch, sampling_rate=rate,
                                           return_tensors="pt")
            inputs = {k: v.to(dev) for k, v in feats.items()}
            fn = net.get_audio_features

        def model(_: object) -> object:
            return fn(**inputs)
        x = None
    elif name == "vggish":
        model, dev = ex._torch_model
        x = torch.randn(batch, 1, 96, 64, device=dev)
    else:
        model, _, dev = ex._runtime
        x = torch.randn(batch, 3, ex.crop_size, ex.crop_size, device=dev)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _torch.autocast(dev, spec["params"].get("precision", "fp32")):
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


def device_table(tmp: Path, n: int, duration: float, device_name: str, batch: int, names: list[str],
                 model_seconds: float = 5.0) -> None:
    import pipeline
    from extractors._torch import pick_device
    from pipeline.config import load_config
    from pipeline.runner import run

    cfg = project(tmp, "dev", "synthetic", {"n_classes": 8, "clips_per_class": max(1, n // 8),
                                            "duration": duration, "seed": 0}, 2)
    device = pick_device(device_name)
    print(f"\n## end-to-end vs model-only on {torch_device_name(device)} (frames for CNNs and clip, 0.96 s examples "
          "for vggish, windows for clap)")
    print(f"{'extractor':<14}{'end-to-end':>14}{'model-only':>14}{'share':>8}")
    for name in [x for x in names if x in DEVICE_ROWS]:
        shutil.rmtree(load_config(cfg).cache, ignore_errors=True)
        t0 = time.perf_counter()
        reports = run("extract", stage=name, config=cfg, device=str(device), batch_size=batch)
        elapsed = time.perf_counter() - t0
        rows_out = len(pipeline.open_store(reports[-1].store_path).to_dask())
        e2e, alone = rows_out / elapsed, model_only(name, str(device), batch, model_seconds)
        print(f"{name:<14}{e2e:>10.1f} f/s{alone:>10.1f} f/s{e2e / alone:>7.0%}")


def full_size_checkpoints(tmp: Path, names: list[str]) -> dict[str, Path]:
    """CLIP ViT-B/32 and CLAP (HTSAT, RoBERTa) at their published sizes, randomly initialised, saved with
    save_pretrained beside the pipeline's own small random model's processor (throughput only, not pretrained)."""
    import torch
    import transformers

    import extractors  # noqa: F401
    from pipeline.registry import EXTRACTORS

    out = {}
    for name, cls_name, cfg_name in (("clip", "CLIPModel", "CLIPConfig"), ("clap", "ClapModel", "ClapConfig")):
        if name not in names:
            continue
        torch.manual_seed(0)
        path = tmp / f"{name}-full"
        getattr(transformers, cls_name)(getattr(transformers, cfg_name)()).save_pretrained(path)
        cls = EXTRACTORS.get(STAGES[name]["implementation"])
        proc = cls(cls.Config(weights="random:0")).tiny_processor()
        if name == "clip":  # the published input: 224 x 224
            proc.image_processor.size, proc.image_processor.crop_size = {"shortest_edge": 224}, {"height": 224, "width": 224}
        proc.save_pretrained(path)
        out[name] = path
    return out


def torch_device_name(device: object) -> str:
    import torch

    if getattr(device, "type", "") == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return "CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="backends,extractors,noop,device",
                    help="tables to print: backends, extractors, noop, device")
    ap.add_argument("--extractors", default="logmel,vggish,vgg16,inception_v3")
    ap.add_argument("--audio-clips", type=int, default=400, help="clips of the backends table")
    ap.add_argument("--clips", type=int, default=48, help="clips of the extractors and device tables")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per clip")
    ap.add_argument("--noop-clips", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2, help="workers of the decode/DSP stages (audio, logmel)")
    ap.add_argument("--device", default="auto", help="device of the end-to-end vs model-only table")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model-seconds", type=float, default=5.0, help="how long the model-only side runs")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="of the CNN, VGGish, CLIP and CLAP stages, end to end and model only")
    ap.add_argument("--device-extractors", default=",".join(DEVICE_ROWS), help="rows of the device table")
    args = parse(ap, audio_clips=4, clips=2, duration=1.0, noop_clips=20, device="cpu", batch_size=2,
                 extractors="logmel,vggish", model_seconds=0.2, device_extractors="vggish,clip,clap")
    only = set(args.only.split(","))
    for name in ("vggish", "vgg16", "inception_v3", "clip", "clap"):
        STAGES[name]["params"]["precision"] = args.precision
    names = args.extractors.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        if "device" in only and not args.smoke:  # the smoke run keeps the pipeline's own small random:0 models
            for name, path in full_size_checkpoints(tmp, args.device_extractors.split(",")).items():
                STAGES[name]["params"]["weights"] = str(path)
        if "backends" in only:
            backends_table(tmp, args.audio_clips, args.duration, args.workers)
        if "extractors" in only:
            extractor_table(tmp, args.clips, args.duration, args.workers, names)
        if "noop" in only:
            noop_table(tmp, args.noop_clips)
        if "device" in only:
            device_table(tmp, args.clips, args.duration, args.device, args.batch_size, args.device_extractors.split(","),
                         args.model_seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
