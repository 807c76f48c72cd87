"""Pictures and tables of the shared tasks' runs: PR curves, Recall@K curves, MAP and Recall tables."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.training.figures import save_figure

DIRECTIONS = ("audio2visual", "visual2audio")


def pr_chance(run_dir: Path) -> float | None:
    """The precision a random ranking gets on a classes run's test folds (class share of the gallery)."""
    values = []
    for f in sorted((run_dir / "folds").glob("*/embeddings.npz")):
        with np.load(f) as z:
            labels = np.asarray(z["labels"])
        if len(labels):
            _, counts = np.unique(labels, return_counts=True)
            values.append(float(np.sum(counts * counts) / len(labels) ** 2))
    return float(np.mean(values)) if values else None


def plot_pr(curves: dict[str, dict[str, Any]], path: Path, title: str,
            run_dirs: dict[str, Path] | None = None) -> None:
    """One PR-curve PNG: a line per (name, direction), and the precision of a random ranking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chance = next((c for d in (run_dirs or {}).values() if (c := pr_chance(d)) is not None), None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, d in zip(axes, DIRECTIONS):
        for name, m in curves.items():
            ax.plot(m[f"pr_{d}"]["recall"], m[f"pr_{d}"]["precision"], marker="o", ms=3,
                    label=f"{name} (MAP {m[f'map_{d}']['mean']:.3f})")
        if chance is not None:
            ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.3f})")
        ax.set_title(d.replace("2", " -> "))
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("interpolated precision")
    save_figure(fig, path, title)


def plot_recall(run_dirs: dict[str, Path], path: Path, title: str, max_k: int = 50) -> None:
    """Recall@K against K (1..max_k) per run, image -> captions and captions -> image (spoken, else written),
    with a random ranking's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.common.metrics import caption_ranks, chance_recall, cosine_similarity

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    k = np.arange(1, max_k + 1)
    image_of, caption = None, "speech"
    for name, run_dir in run_dirs.items():
        with np.load(run_dir / "test_embeddings.npz") as z:
            caption = "speech" if "speech" in z else "text"
            i2c, c2i = caption_ranks(cosine_similarity(z["image"], z[caption]), z["image_of"])
            image_of = z["image_of"]
        for ax, ranks in zip(axes, (i2c, c2i)):
            ax.plot(k, [100 * np.mean(ranks < kk) for kk in k], label=name)
    if image_of is not None:
        chance = chance_recall(image_of, tuple(int(x) for x in k))
        for ax, d in zip(axes, ("image2caption", "caption2image")):
            ax.plot(k, [chance[d][f"r@{kk}"] for kk in k], color="grey", ls="--", lw=1, label="chance")
    for ax, d in zip(axes, (f"image -> {caption}", f"{caption} -> image")):
        ax.set_title(d)
        ax.set_xlabel("K")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("Recall@K (%)")
    save_figure(fig, path, title)


def table_rows(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows (one per run) of MAP mean/std per direction, chance and fold count, for tables."""
    rows = []
    for name, m in runs.items():
        row = {"stage": name, "implementation": m.get("implementation", ""), "folds": len(m["folds"]),
               "chance": m["chance_map"]["mean"]}
        for d in DIRECTIONS:
            row[d] = (m[f"map_{d}"]["mean"], m[f"map_{d}"]["std"])
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text MAP table with chance level beside each row."""
    w = max([14, *(len(r["stage"]) for r in rows)])  # the stage column fits its longest name
    head = f"{'stage':<{w}} {'method':<12} {'MAP audio->visual':>18} {'MAP visual->audio':>18} {'chance':>7} {'folds':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{r[d][0]:.3f} ± {r[d][1]:.3f}" for d in DIRECTIONS]
        lines.append(f"{r['stage']:<{w}} {r['implementation']:<12} {cells[0]:>18} {cells[1]:>18} "
                     f"{r['chance']:>7.3f} {r['folds']:>5}")
    return "\n".join(lines)


def summary_line(m: dict[str, Any]) -> str:
    """'MAP audio->visual 0.61 ± 0.04, visual->audio ... (chance ...), N folds' for one train run."""
    a, v = (f"{m[f'map_{d}']['mean']:.3f} ± {m[f'map_{d}']['std']:.3f}" for d in DIRECTIONS)
    return (f"MAP audio->visual {a}, visual->audio {v} (chance {m['chance_map']['mean']:.3f}), "
            f"{len(m['folds'])} fold(s), {m.get('protocol', '')}")


def caption_modality(m: dict[str, Any]) -> str:
    """The captions a pairs run's rsum counts: 'speech' (spoken captions), else 'text' (written ones)."""
    return "speech" if "image2speech" in m else "text"


def directions(m: dict[str, Any]) -> tuple[str, str]:
    """('image2speech', 'speech2image') or ('image2text', 'text2image'): the two directions rsum counts."""
    c = caption_modality(m)
    return f"image2{c}", f"{c}2image"


def chance_rsum(m: dict[str, Any]) -> float:
    """The rsum (R@1+5+10, image <-> captions) a random ranking gets, from a captions run's metrics."""
    return float(sum(v for d in directions(m) for v in m["chance"][d].values()))


def _cell(m: dict[str, Any], d: str) -> str:
    return f"{m[d]['r@1']:5.1f} {m[d]['r@5']:5.1f} {m[d]['r@10']:5.1f} {m[d]['medr']:5.0f}"


def recall_line(m: dict[str, Any]) -> str:
    """'image->speech R@1/5/10 ..., speech->image ..., rsum ... (chance ...)' for one captions run."""
    chance = chance_rsum(m)
    parts = [f"{d.replace('2', '->')} R@1/5/10 {m[d]['r@1']:.1f}/{m[d]['r@5']:.1f}/{m[d]['r@10']:.1f}, "
             f"medr {m[d]['medr']:.0f}" for d in directions(m)]
    line = (f"{'; '.join(parts)}; rsum {m['rsum']:.1f} (chance {chance:.1f}) on {m['n_images']} "
            f"{m.get('evaluated_on', 'test')} images")
    if m.get("folds", 1) > 1:
        line += f" ({m['folds']} folds of {m['n_images'] // m['folds']})"
    if "whole" in m:
        w = m["whole"]
        line += "; all at once: " + ", ".join(f"{d.replace('2', '->')} R@1 {w[d]['r@1']:.1f}" for d in directions(w))
        line += f", rsum {w['rsum']:.1f}"
    return line


def recall_table(runs: dict[str, dict[str, Any]]) -> str:
    """A plain-text Recall@K table (R@1 R@5 R@10 medr each way, rsum, chance rsum) of captions runs."""
    c = caption_modality(next(iter(runs.values()))) if runs else "speech"
    head = (f"{'stage':<18} {'image -> ' + c:>23}   {c + ' -> image':>23} {'rsum':>7} {'chance':>7} {'images':>6}\n"
            f"{'':<18} {'R@1   R@5  R@10  medr':>23}   {'R@1   R@5  R@10  medr':>23}")
    lines = [head, "-" * len(head.splitlines()[0])]
    for name, m in runs.items():
        chance = chance_rsum(m)
        fwd, back = directions(m)
        lines.append(f"{name:<18} {_cell(m, fwd):>23}   {_cell(m, back):>23} "
                     f"{m['rsum']:7.1f} {chance:7.1f} {m['n_images']:>6}")
    return "\n".join(lines)

