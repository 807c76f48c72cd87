"""Device placement and batched inference: pinned memory, non_blocking copies, and on CUDA
bf16 autocast + channels_last; inference_mode everywhere. The same code runs on a CPU."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np


def cuda_present() -> bool:
    """False when there is certainly no CUDA device (Linux without /dev/nvidia*): spares torch's driver probe,
    which can take seconds on a machine without a GPU."""
    import sys
    from pathlib import Path

    return not sys.platform.startswith("linux") or any(Path("/dev").glob("nvidia[0-9]*"))


def pick_device(name: str | None) -> Any:
    """'auto' -> cuda when available, else cpu; anything else as torch.device."""
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if cuda_present() and torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} asked for, but CUDA is not available here; use --device cpu")
    return dev


def prepare_model(model: Any, device: Any, image: bool) -> Any:
    """eval(), on the device; channels_last for CNNs on CUDA."""
    import torch

    model = model.eval().to(device)
    if image and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def autocast(device: Any, precision: str) -> Iterator[None]:
    """bf16 autocast when the stage's `precision` says bf16 (on the CPU or CUDA), else nothing: the device,
    an execution param, never changes the numbers a store's key stands for."""
    import torch

    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def run_batched(model: Any, data: np.ndarray, batch_size: int, device: Any,
                prepare: Callable[[Any], Any] | None = None, image: bool = False,
                precision: str = "fp32") -> np.ndarray:
    """Run `model` over rows of `data` in batches; `prepare` maps a device tensor batch to model input."""
    import torch

    outs = []
    with torch.inference_mode():
        for start in range(0, data.shape[0], max(1, batch_size)):
            t = torch.from_numpy(np.ascontiguousarray(data[start:start + batch_size]))
            if device.type == "cuda":
                t = t.pin_memory().to(device, non_blocking=True)
            if prepare is not None:
                t = prepare(t)
            if image and device.type == "cuda":
                t = t.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                y = model(t)
            outs.append(y.float().cpu().numpy())
    if not outs:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(outs, axis=0)
