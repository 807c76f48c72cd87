"""CNN extractors in fp32 and in bf16 autocast on this machine's CPU (or --device cuda), in one run: images/s
of the network and how close the bf16 features are to the fp32 ones (cosine similarity per row).

    .venv/bin/python benchmarks/precision.py
    .venv/bin/python benchmarks/precision.py --arch inception_v3 --batch 8 --batches 4
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._smoke import parse  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vgg16", choices=["vgg16", "inception_v3"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = parse(ap, batch=2, batches=1, device="cpu")
    import torch

    import extractors  # noqa: F401
    from extractors import _torch
    from pipeline.registry import EXTRACTORS

    cls = EXTRACTORS.get(args.arch)
    ex = cls(cls.Config(weights="random:0"))
    device = _torch.pick_device(args.device)
    model = _torch.prepare_model(ex.network(), device, image=True)
    side = ex.input_size()[1]
    rng = np.random.default_rng(0)
    # natural-ish pictures: smooth random fields, ImageNet-normalised
    x = torch.nn.functional.interpolate(torch.from_numpy(rng.normal(size=(args.batch, 3, 14, 14)).astype(np.float32)),
                                        size=(side, side), mode="bilinear")
    out, speed = {}, {}
    for precision in ("fp32", "bf16", "fp32"):  # fp32 twice: the first pass warms up
        rows = []
        t0 = time.perf_counter()
        for _ in range(args.batches):
            rows.append(_torch.run_batched(model, x.numpy(), args.batch, device, image=True, precision=precision))
        speed[precision] = args.batch * args.batches / (time.perf_counter() - t0)
        out[precision] = np.concatenate(rows).reshape(args.batch * args.batches, -1)
    a, b = out["fp32"], out["bf16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    hw = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no bf16 instructions"
    print(f"{args.arch} at {side} px, batch {args.batch}, {device} ({hw}), random weights")
    print(f"  fp32 {speed['fp32']:.1f} img/s   bf16 {speed['bf16']:.1f} img/s   ratio {speed['bf16'] / speed['fp32']:.2f}x")
    print(f"  bf16 vs fp32 features: cosine similarity min {cos.min():.5f}, mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
