"""See, Hear, and Read's pictures and tables: retrieval between every two modalities."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.training.figures import save_figure


def _arrow(d: str) -> str:
    return d.replace("2", "->")


def matrix_line(m: dict[str, Any]) -> str:
    """'image->text medr 2 (chance 10), ...; text->sound medr 3 (chance 50) ...' for one modalities run."""
    parts = [f"{_arrow(d)} medr {v['medr']:.0f} (chance {m['chance'][d]['medr']:.0f}) R@10 {v['r@10']:.1f}"
             for d, v in m["matrix"].items()]
    line = f"{'; '.join(parts)}; on {m['n_items']} items of {m['n_images']} {m.get('evaluated_on', 'test')} images"
    return line + (f" ({m['folds']} folds)" if m.get("folds", 1) > 1 else "")


def matrix_table(runs: dict[str, dict[str, Any]]) -> str:
    """Per run, a query x target table of median ranks (chance in brackets) and R@1/5/10."""
    out = []
    for name, m in runs.items():
        mods = m["modalities"]
        head = f"{name}: median rank (chance), R@1/5/10; rows query, columns target"
        lines = [head, f"{'':<8}" + "".join(f"{t:>24}" for t in mods)]
        for q in mods:
            cells = []
            for t in mods:
                d = m["matrix"].get(f"{q}2{t}")
                cells.append("-" if d is None else
                             f"{d['medr']:.0f} ({m['chance'][f'{q}2{t}']['medr']:.0f}) "
                             f"{d['r@1']:.0f}/{d['r@5']:.0f}/{d['r@10']:.0f}")
            lines.append(f"{q:<8}" + "".join(f"{c:>24}" for c in cells))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def plot_modality_matrix(runs: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """One heatmap per run: median rank of each query (row) x target (column) modality, chance in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.8), squeeze=False)
    for ax, (name, m) in zip(axes[0], runs.items()):
        mods = m["modalities"]
        medr = np.full((len(mods), len(mods)), np.nan)
        for i, q in enumerate(mods):
            for j, t in enumerate(mods):
                if f"{q}2{t}" in m["matrix"]:
                    medr[i, j] = m["matrix"][f"{q}2{t}"]["medr"] / m["chance"][f"{q}2{t}"]["medr"]
        ax.imshow(medr, cmap="viridis_r", vmin=0, vmax=1)
        for i, q in enumerate(mods):
            for j, t in enumerate(mods):
                d = f"{q}2{t}"
                text = "" if d not in m["matrix"] else \
                    f"{m['matrix'][d]['medr']:.0f}\n(chance {m['chance'][d]['medr']:.0f})"
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="white" if not np.isnan(medr[i, j]) and medr[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(mods)), mods)
        ax.set_yticks(range(len(mods)), mods)
        ax.set_xlabel("target")
        ax.set_ylabel("query")
        ax.set_title(f"{name}: median rank", fontsize=10)
    save_figure(fig, path, title, dpi=100)

