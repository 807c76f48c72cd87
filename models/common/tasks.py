"""The shared tasks: `classes` (labelled clips; k-fold cross-validation or the train/test split; MAP both ways,
precision@K and PR curves, TNN-C-CCA's evaluation) and `pairs` (items grouped by a shared item, the published split,
`val` selects the model; Recall@K, medr, meanr both ways, VASE's evaluation), each with its report section."""
from __future__ import annotations

import html
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.cache import hash_key
from pipeline.registry import register_task
from pipeline.training.base import TrainError, atomic_save, save_npz
from pipeline.training.figures import plot_history
from pipeline.training.sections import Row, Section, chart, details, label, params_text
from pipeline.training.tasks import VAL_SPLITS, Task, Unit, natural_key

from . import figures

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.datasets import Clip, Manifest

    from .items import Items


class MapSection(Section):
    """Labelled clips: MAP both ways beside chance, one PR chart per dataset."""

    order, text_order = 0, 0

    def text(self, rows: list[Row]) -> list[str]:
        head = (f"{'dataset':<16} {'stage':<14} {'MAP a->v':>15} {'MAP v->a':>15} {'chance':>7} {'folds':>5}  "
                f"{'when':<16} params")
        lines = [head, "-" * len(head)]
        for r in rows:
            a, v = (f"{r[d][0]:.3f} ± {r[d][1]:.3f}" for d in figures.DIRECTIONS)
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["completed"]))
            flag = " [random-weight features]" if r["random_weights"] else ""
            lines.append(f"{r['dataset']:<16} {r['stage']:<14} {a:>15} {v:>15} {r['chance']:>7.3f} {r['folds']:>5}  "
                         f"{when:<16} {params_text(r['params'])}{flag}")
        return ["\n".join(lines)]

    def html(self, rows: list[Row]) -> str:
        e = html.escape
        body = []
        for r in rows:
            a, v = (f"{r[d][0]:.3f}&nbsp;&plusmn;&nbsp;{r[d][1]:.3f}" for d in figures.DIRECTIONS)
            body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td>{e(r['implementation'])}</td>"
                        f"<td class='wrap'>{e(r['features'])}</td><td class='num'>{a}</td><td class='num'>{v}</td>"
                        f"<td class='num'>{r['chance']:.3f}</td><td>{e(r['protocol'])}&nbsp;({r['folds']})</td>"
                        f"<td class='num'>{r['clips'] if r['clips'] is not None else ''}</td>"
                        f"<td class='num'>{e(time.strftime('%m-%d %H:%M', time.localtime(r['completed'])))}</td>"
                        f"<td>{details(r)}</td></tr>")
        return ("<h2>Labelled clips: cross-modal MAP</h2><p>Mean &plusmn; std over the protocol's test folds (cosine "
                "similarity, relevance = same class); chance = the exact expected MAP of a random ranking.</p>"
                "<table><tr><th>dataset</th><th>stage</th><th>method</th><th>features</th><th>MAP a&rarr;v</th>"
                "<th>MAP v&rarr;a</th><th>chance</th><th>protocol</th><th>clips</th><th>when</th><th></th></tr>"
                + "".join(body) + "</table>")

    def charts(self, dataset: str, rows: list[Row], out_dir: Path) -> list[str]:
        path = out_dir / f"{dataset}-pr.png"
        figures.plot_pr({label(rows, r): r["metrics"] for r in rows}, path, f"{dataset}: PR curves of every run",
                        {label(rows, r): Path(r["run_dir"]) for r in rows})
        return [f"<h3>{html.escape(dataset)}: precision-recall</h3>{chart(path)}"]


class RecallSection(Section):
    """Paired items: Recall@K both ways, rsum beside chance, one Recall@K chart per dataset."""

    order, text_order = 1, 1

    def accepts(self, row: Row) -> bool:
        return "rsum" in row["metrics"]

    def text(self, rows: list[Row]) -> list[str]:
        out = []
        for dataset in dict.fromkeys(r["dataset"] for r in rows):
            mine = [r for r in rows if r["dataset"] == dataset]
            flag = " [random-weight features]" if any(r["random_weights"] for r in mine) else ""
            out.append(f"{dataset}: Recall@K on {mine[0]['metrics'].get('evaluated_on', 'test')}{flag}\n"
                       + figures.recall_table({label(mine, r): r["metrics"] for r in mine}))
        return out

    def html(self, rows: list[Row]) -> str:
        e = html.escape
        body = []
        for r in rows:
            m = r["metrics"]
            nums = "".join(f"<td class='num'>{m[d][k]:.1f}</td>" for d in figures.directions(m)
                           for k in ("r@1", "r@5", "r@10", "medr"))
            body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td class='wrap'>{e(r['features'])}"
                        f"</td>{nums}<td class='num'>{m['rsum']:.1f}</td><td class='num'>"
                        f"{figures.chance_rsum(m):.1f}</td><td class='num'>{m['n_images']}&nbsp;"
                        f"({e(str(m.get('evaluated_on')))})</td><td>{details(r)}</td></tr>")
        heads = "".join(f"<th>{k}</th>" for _ in range(2) for k in ("R@1", "R@5", "R@10", "medr"))
        return ("<h2>Paired items: Recall@K</h2><p>Percent of queries whose match ranks in the top K, on the test "
                "split (Places: val); medr = floor(median rank) + 1; rsum = the six R@K; chance = a random "
                "ranking's rsum.</p><table><tr><th rowspan=2>dataset</th><th rowspan=2>stage</th>"
                "<th rowspan=2>features</th><th colspan=4>image &rarr; captions</th><th colspan=4>captions &rarr; "
                "image</th><th rowspan=2>rsum</th><th rowspan=2>chance</th><th rowspan=2>test images</th>"
                f"<th rowspan=2></th></tr><tr>{heads}</tr>" + "".join(body) + "</table>")

    def charts(self, dataset: str, rows: list[Row], out_dir: Path) -> list[str]:
        path = out_dir / f"{dataset}-recall.png"
        figures.plot_recall({label(rows, r): Path(r["run_dir"]) for r in rows}, path,
                            f"{dataset}: Recall@K of every run")
        return [f"<h3>{html.escape(dataset)}: Recall@K</h3>{chart(path)}"]


@register_task
class Classes(Task):
    """Labelled items; folds or split; MAP, precision@K, PR curves, chance."""

    name = "classes"
    digest_field = "labels"
    final = "refit"
    plot_file, plot_label = "pr_curve.png", "PR curves"
    modalities = ("audio", "visual")
    aliases = ("",)  # runs written before metrics.json recorded the task
    sections = (MapSection,)

    def applies(self, manifest: "Manifest") -> str | None:
        if not any(c.label is not None for c in manifest.clips):
            return "it trains on class-labelled clips; this dataset has no class labels"
        return None

    def digest(self, ctx: "Context") -> str:
        assert ctx.manifest is not None
        return hash_key([(c.clip_id, ctx.clip_keys[c.clip_id], c.label, c.fold, c.split) for c in ctx.manifest.clips])

    def qualifies(self, clip: "Clip") -> str | None:
        return "no class label" if clip.label is None else None

    def annotate(self, clips: list["Clip"], manifest: "Manifest") -> dict[str, Any]:
        classes = list(manifest.classes or sorted({str(c.label) for c in clips}))
        index = {c: i for i, c in enumerate(classes)}
        return {"labels": np.array([index[str(c.label)] for c in clips], dtype=np.int64), "classes": classes}

    def plan(self, items: "Items", params: dict[str, Any]) -> tuple[str, list[Unit], dict[str, Any]]:
        folds = [c.fold for c in items.media]
        splits = [c.split for c in items.media]
        has_folds = all(f is not None for f in folds) and len(set(folds)) >= 2
        has_split = "train" in splits and "test" in splits
        protocol = params.get("protocol", "auto")
        if protocol == "auto":
            protocol = "folds" if has_folds else "split" if has_split else ""
            if not protocol:
                raise TrainError("the dataset has neither folds (>= 2) nor a train/test split; give its adapter "
                                 "n_folds, or set the stage's protocol")
        if protocol == "folds":
            if not has_folds:
                raise TrainError("protocol 'folds' needs every clip in one of >= 2 folds; this dataset has none "
                                 "(use protocol: split)")
            f = np.asarray([str(x) for x in folds])
            masks = [(f"fold-{k}", f != k, f == k) for k in sorted(set(f), key=natural_key)]
        else:
            if not has_split:
                raise TrainError("protocol 'split' needs clips in the 'train' and 'test' splits; this dataset has "
                                 "none (use protocol: folds)")
            s = np.asarray([str(x) for x in splits])
            masks = [("split", s == "train", s == "test")]
        assert items.labels is not None
        for name, train, test in masks:
            if len(np.unique(items.labels[train])) < 2 or test.sum() == 0:
                raise TrainError(f"{name}: needs training clips of >= 2 classes and some test clips; "
                                 f"has {int(train.sum())} training and {int(test.sum())} test clips")
        units = [Unit(name, np.flatnonzero(train), np.flatnonzero(test)) for name, train, test in masks]
        return protocol, units, {"protocol": protocol, "folds": [u.name for u in units],
                                 "clips": len(items), "classes": items.classes}

    def unit_dir(self, run_dir: Path, unit: Unit) -> Path:
        return run_dir / "folds" / unit.name

    def committed(self, run_dir: Path, unit: Unit) -> bool:
        return (self.unit_dir(run_dir, unit) / "embeddings.npz").exists()

    def save_unit(self, run_dir: Path, unit: Unit, trainer: Any, test: "Items", seconds: float) -> None:
        import torch

        emb = trainer.embed(test)
        final = self.unit_dir(run_dir, unit)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{unit.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        save_npz(tmp / "embeddings.npz", {"clip_ids": np.array(test.ids, dtype=str), "labels": test.labels,
                                          **{k: np.asarray(v, dtype=np.float32) for k, v in emb.items()}})
        torch.save(trainer.state_dict(), tmp / "model.pt")
        (tmp / "history.json").write_text(json.dumps({"train_clips": len(unit.train), "test_clips": len(unit.test),
                                                      "seconds": seconds, **trainer.history}))
        if final.exists():
            shutil.rmtree(final)  # an uncommitted leftover (no embeddings.npz)
        os.replace(tmp, final)

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        from models.common.metrics import retrieval_metrics

        ks, points = tuple(params.get("ks", (1, 5, 10))), int(params.get("pr_points", 11))
        per_fold: dict[str, dict[str, Any]] = {}
        for fold in sorted((run_dir / "folds").iterdir(), key=lambda p: natural_key(p.name.split("-", 1)[-1])):
            if fold.name.startswith(".") or not (fold / "embeddings.npz").exists():
                continue
            with np.load(fold / "embeddings.npz") as z:
                per_fold[fold.name] = retrieval_metrics(z["audio"], z["visual"], z["labels"], ks, points)
        if not per_fold:
            raise TrainError(f"{run_dir} has no committed folds; run its train stage")
        return {"folds": per_fold, **_summarise(per_fold)}

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        figures.plot_pr({name: m for name, (_, m) in runs.items()}, path / self.plot_file, title,
                        {name: d for name, (d, _) in runs.items()})
        return path / self.plot_file

    def line(self, metrics: dict[str, Any]) -> str:
        return figures.summary_line(metrics)

    def report_row(self, row: Row, metrics: dict[str, Any], info: dict[str, Any]) -> Row:
        row = {**super().report_row(row, metrics, info), "protocol": metrics["protocol"],
               "folds": len(metrics["folds"]), "clips": info.get("clips"), "chance": metrics["chance_map"]["mean"]}
        for d in figures.DIRECTIONS:
            row[d] = (metrics[f"map_{d}"]["mean"], metrics[f"map_{d}"]["std"])
            row[f"p@1_{d}"] = metrics.get(f"p@1_{d}", {}).get("mean")
        return row

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        return figures.format_table(figures.table_rows(runs))


def _summarise(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over folds of every scalar metric, and the mean PR curve per direction."""
    # scalars every fold has (P@K exists only where a fold has >= K test clips)
    names = [k for k, v in next(iter(per_fold.values())).items()
             if isinstance(v, float) and all(k in m for m in per_fold.values())]
    out: dict[str, Any] = {}
    for k in names:
        vals = np.array([m[k] for m in per_fold.values()])
        out[k] = {"mean": float(vals.mean()), "std": float(vals.std()), "values": vals.tolist()}
    for d in figures.DIRECTIONS:
        curves = [m[f"pr_{d}"] for m in per_fold.values()]
        out[f"pr_{d}"] = {"recall": curves[0]["recall"],
                          "precision": np.mean([c["precision"] for c in curves], axis=0).tolist()}
    return out


@register_task
class Pairs(Task):
    """Items grouped by a shared item (captions of an image); the published split; Recall@K both ways."""

    name = "pairs"
    digest_field = "pairs"
    final = "unit"
    plot_file, plot_label = "recall_curve.png", "Recall@K curves"
    modalities = ("image", "speech", "text")
    aliases = ("captions",)  # its name before the training core
    sections = (RecallSection,)

    def applies(self, manifest: "Manifest") -> str | None:
        if not any(c.group for c in manifest.clips):
            return "it trains on captions paired with images (clips grouped by image); this dataset has none"
        return None

    def digest(self, ctx: "Context") -> str:
        assert ctx.manifest is not None
        return hash_key([(c.clip_id, ctx.clip_keys[c.clip_id], c.group, c.split, list(c.text))
                         for c in ctx.manifest.clips])

    def qualifies(self, clip: "Clip") -> str | None:
        return "not paired with an image (no group)" if clip.group is None else None

    def annotate(self, clips: list["Clip"], manifest: "Manifest") -> dict[str, Any]:
        groups = list(dict.fromkeys(c.group for c in clips))
        index = {g: i for i, g in enumerate(groups)}
        return {"groups": groups, "group_of": np.array([index[c.group] for c in clips], dtype=np.int64)}

    def plan(self, items: "Items", params: dict[str, Any]) -> tuple[str, list[Unit], dict[str, Any]]:
        by_split: dict[str, list[int]] = {}
        for i, c in enumerate(items.media):
            by_split.setdefault(str(c.split).lower(), []).append(i)
        val_name = next((s for s in VAL_SPLITS if s in by_split), None)
        if "train" not in by_split or val_name is None:
            raise TrainError(f"a captions trainer needs a 'train' and a 'val' split (the dataset's published split); "
                             f"this dataset has {sorted(by_split)} among its usable captions")
        test_name = "test" if "test" in by_split else val_name  # no test split (Places): val, as the reference
        unit = Unit("split", np.array(by_split["train"]), np.array(by_split[test_name]), np.array(by_split[val_name]),
                    val_is_test=test_name == val_name)
        assert unit.val is not None and items.group_of is not None
        roles = {"train": unit.train, "val": unit.val, "test": unit.test}
        groups = {r: len({int(items.group_of[i]) for i in idx}) for r, idx in roles.items()}
        return "split", [unit], {"splits": {"train": "train", "val": val_name, "test": test_name},
                                 "captions": {r: len(idx) for r, idx in roles.items()}, "images": groups}

    def unit_dir(self, run_dir: Path, unit: Unit) -> Path:
        return run_dir

    def committed(self, run_dir: Path, unit: Unit) -> bool:
        return (run_dir / "test_embeddings.npz").exists() and (run_dir / "model.pt").exists()

    def save_unit(self, run_dir: Path, unit: Unit, trainer: Any, test: "Items", seconds: float) -> None:
        atomic_save(trainer.state_dict(), run_dir / "model.pt")
        if trainer.history.get("loss"):
            plot_history(trainer.history, run_dir / "training_curve.png", f"{run_dir.name}")
        emb = trainer.embed(test)
        tmp = run_dir / f".tmp-test-{uuid.uuid4().hex[:8]}.npz"
        save_npz(tmp, {"clip_ids": np.array(test.ids, dtype=str), "groups": np.array(test.groups, dtype=str),
                       "image_of": test.group_of, **{k: np.asarray(v, dtype=np.float32) for k, v in emb.items()},
                       **self.extra_arrays(test)})
        os.replace(tmp, run_dir / "test_embeddings.npz")  # last: marks the unit committed

    def extra_arrays(self, test: "Items") -> dict[str, np.ndarray]:
        """Arrays saved beside the test embeddings (none here)."""
        return {}

    def embed_parts(self, items: "Items", units: list[Unit]) -> list[np.ndarray]:
        u = units[0]
        parts = [u.train, u.val] if u.val is not None else [u.train]
        return parts + ([u.test] if not any(np.array_equal(u.test, p) for p in parts) else [])

    def scoring_inputs(self, run_dir: Path, params: dict[str, Any]) -> tuple[
            tuple[int, ...], int, dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """What scoring a run reads: the K of R@K, the folds, the test split's embeddings of the task's modalities,
        each item's group (`image_of`), and which items have each optional modality (`present_<m>`, where saved)."""
        ks = tuple(params.get("ks", (1, 5, 10)))
        folds = int(params.get("folds", params.get("eval_folds", 1)))
        with np.load(run_dir / "test_embeddings.npz") as z:
            emb = {k: z[k] for k in self.modalities if k in z}
            present = {k: z[f"present_{k}"] for k in self.modalities if f"present_{k}" in z}
            return ks, folds, emb, z["image_of"], present

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        from models.common.metrics import caption_recall

        ks, folds, emb, image_of, _ = self.scoring_inputs(run_dir, params)
        try:
            out = caption_recall(emb, image_of, ks, folds)
            if folds > 1:  # COCO's two protocols: 1k (5 folds of 1000 images, averaged) and the whole 5k
                whole = caption_recall(emb, image_of, ks, 1)
                out["whole"] = {k: whole[k] for k in (*figures.directions(whole), "rsum", "n_images")}
        except ValueError as e:
            raise TrainError(f"{run_dir}: {e}") from None
        if params.get("sampled_recall"):  # the VGS reference's Recall@10: 100 draws of 1000 pairs, with replacement
            from models.common.metrics import sampled_recall_at_10

            to_captions, to_image = figures.directions(out)
            pairs = (emb[to_captions.split("2", 1)[1]], emb["image"][image_of])
            out["sampled_r@10"] = {to_image: sampled_recall_at_10(*pairs),
                                   to_captions: sampled_recall_at_10(*pairs[::-1])}
        return out

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        figures.plot_recall({name: d for name, (d, _) in runs.items()}, path / self.plot_file, title)
        return path / self.plot_file

    def line(self, metrics: dict[str, Any]) -> str:
        return figures.recall_line(metrics)

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        return figures.recall_table(runs)

