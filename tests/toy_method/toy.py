"""A method in one folder, as a plugin: the `toy-ridge` trainer (ridge regression from audio features onto visual
ones), its own task `held-out-half` (every other labelled clip held out), its own metric (nearest-class accuracy)
and its own report section. Nothing outside this folder knows it: a stages.yaml loads it with `plugins:`."""
from __future__ import annotations

import html
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.common.base import ClipVectorTrainer, TrainConfig, arrays, tensors
from pipeline.cache import hash_key
from pipeline.registry import register_task, register_trainer
from pipeline.training.base import TrainError, atomic_save
from pipeline.training.figures import save_figure
from pipeline.training.sections import Row, Section, details
from pipeline.training.tasks import Task, Unit

if TYPE_CHECKING:
    from models.common.items import Items
    from pipeline.context import Context
    from pipeline.datasets import Clip, Manifest

DIRECTIONS = ("audio2visual", "visual2audio")


def nn_accuracy(queries: np.ndarray, gallery: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray) -> float:
    """The share of queries whose nearest gallery row (cosine similarity) has the query's class."""
    q = queries / (np.linalg.norm(queries, axis=1, keepdims=True) + 1e-12)
    g = gallery / (np.linalg.norm(gallery, axis=1, keepdims=True) + 1e-12)
    return float(np.mean(g_labels[np.argmax(q @ g.T, axis=1)] == q_labels))


class NearestSection(Section):
    """Runs of `held-out-half`: nearest-class accuracy both ways beside chance."""

    order, text_order = 50, 50

    def text(self, rows: list[Row]) -> list[str]:
        return [f"{r['dataset']} / {r['stage']}: {HeldOutHalf().line(r['metrics'])}" for r in rows]

    def html(self, rows: list[Row]) -> str:
        e = html.escape
        body = "".join(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td>"
                       + "".join(f"<td class='num'>{r['metrics'][d]:.3f}</td>" for d in DIRECTIONS)
                       + f"<td class='num'>{r['metrics']['chance']:.3f}</td><td>{details(r)}</td></tr>" for r in rows)
        return ("<h2>Toy: nearest-class accuracy</h2><table><tr><th>dataset</th><th>stage</th><th>audio&rarr;visual"
                "</th><th>visual&rarr;audio</th><th>chance</th><th></th></tr>" + body + "</table>")


@register_task
class HeldOutHalf(Task):
    """Labelled clips; every other one (in manifest order) is held out; nearest-class accuracy both ways."""

    name = "held-out-half"
    digest_field = "labels"
    final = "unit"
    plot_file, plot_label = "nn_accuracy.png", "nearest-class accuracy"
    modalities = ("audio", "visual")
    sections = (NearestSection,)

    def applies(self, manifest: "Manifest") -> str | None:
        return None if any(c.label is not None for c in manifest.clips) else "this dataset has no class labels"

    def digest(self, ctx: "Context") -> str:
        assert ctx.manifest is not None
        return hash_key([(c.clip_id, ctx.clip_keys[c.clip_id], c.label) for c in ctx.manifest.clips])

    def qualifies(self, clip: "Clip") -> str | None:
        return "no class label" if clip.label is None else None

    def annotate(self, clips: list["Clip"], manifest: "Manifest") -> dict[str, Any]:
        classes = sorted({c.label for c in clips})
        return {"labels": np.array([classes.index(c.label) for c in clips], dtype=np.int64), "classes": classes}

    def plan(self, items: "Items", params: dict[str, Any]) -> tuple[str, list[Unit], dict[str, Any]]:
        idx = np.arange(len(items))
        if len(idx) < 4:
            raise TrainError(f"held-out-half needs at least 4 labelled clips; this dataset has {len(idx)}")
        return "half", [Unit("half", idx[::2], idx[1::2])], {"clips": len(items)}

    def unit_dir(self, run_dir: Path, unit: Unit) -> Path:
        return run_dir

    def committed(self, run_dir: Path, unit: Unit) -> bool:
        return (run_dir / "test_embeddings.npz").exists()

    def save_unit(self, run_dir: Path, unit: Unit, trainer: Any, test: "Items", seconds: float) -> None:
        atomic_save(trainer.state_dict(), run_dir / "model.pt")
        emb = trainer.embed(test)
        tmp = run_dir / f".tmp-{uuid.uuid4().hex[:8]}.npz"
        np.savez(tmp, labels=test.labels, **{k: np.asarray(v, dtype=np.float32) for k, v in emb.items()})
        os.replace(tmp, run_dir / "test_embeddings.npz")  # last: marks the unit committed

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        with np.load(run_dir / "test_embeddings.npz") as z:
            a, v, y = z["audio"], z["visual"], z["labels"]
        _, counts = np.unique(y, return_counts=True)
        return {"audio2visual": nn_accuracy(a, v, y, y), "visual2audio": nn_accuracy(v, a, y, y),
                "chance": float(np.sum((counts / len(y)) ** 2)), "n_test": int(len(y))}

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 3))
        for k, (name, (_, m)) in enumerate(runs.items()):
            ax.bar([k * 3, k * 3 + 1], [m[d] for d in DIRECTIONS], label=name)
            ax.axhline(m["chance"], color="grey", linestyle="--")
        ax.set_ylabel("nearest-class accuracy")
        ax.legend()
        save_figure(fig, path / self.plot_file, title)
        return path / self.plot_file

    def line(self, metrics: dict[str, Any]) -> str:
        return (f"nearest-class accuracy audio->visual {metrics['audio2visual']:.3f}, visual->audio "
                f"{metrics['visual2audio']:.3f} (chance {metrics['chance']:.3f}) on {metrics['n_test']} held-out clips")

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        return "\n".join(f"{name}: {self.line(m)}" for name, m in runs.items())


@dataclass
class ToyConfig(TrainConfig):
    """Ridge strength (an identity param: it changes the run key)."""

    alpha: float = 1.0


@register_trainer
class ToyRidge(ClipVectorTrainer):
    """Audio features mapped onto visual ones by ridge regression (z-scored views)."""

    name = "toy-ridge"
    VERSION = 1
    Config = ToyConfig
    tasks = ("held-out-half",)

    def fit_arrays(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> "ToyRidge":
        self.fit_scaler(audio, visual)
        a, v = self.scale(audio, "audio"), self.scale(visual, "visual")
        self.w_ = np.linalg.solve(a.T @ a + self.config.alpha * np.eye(a.shape[1]), a.T @ v)
        return self

    def transform(self, audio: np.ndarray, visual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.scale(audio, "audio") @ self.w_, self.scale(visual, "visual")

    def state_dict(self) -> dict[str, Any]:
        return tensors({"w": self.w_, "norm": self.norm_})

    def load_state_dict(self, state: dict[str, Any]) -> "ToyRidge":
        state = arrays(state)
        self.w_, self.norm_ = state["w"], state["norm"]
        return self
