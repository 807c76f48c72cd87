"""Pictures every run can have: a figure written atomically, and the training curves."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np


def save_figure(fig: Any, path: Path, title: str, dpi: int = 110) -> None:
    """Title, lay out and write a matplotlib figure as PNG, atomically (temporary name, then rename)."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Training loss and validation rsum per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for k in ("loss", "vse_loss", "rec_loss"):
        if k in history:
            ax1.plot(epochs, history[k], label=k)
    ax1.set_xlabel("epoch")
    ax1.set_title("training loss (per batch)")
    ax1.legend(fontsize=8)
    ax2.plot(epochs, history.get("val_rsum", []), marker="o", ms=3)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation rsum (R@1+5+10, both ways)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    save_figure(fig, path, title, dpi=100)

