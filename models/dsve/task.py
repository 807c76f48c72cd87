"""The `grounding` task: paired items (captions or phrases grouped by image, as `pairs`) whose phrases carry a box
in their image (Visual Genome regions) or whose images carry object masks (COCO instances). It trains and selects
like `pairs` and scores Recall@K; it also turns each phrase into a heatmap over its image with the final model
(DSVE-loc's localization, models/dsve/heatmaps.py) and scores

- the pointing game: a phrase hits when its heatmap's maximum falls inside its box, beside the "always the image
  centre" baseline; the heatmaps are kept (a store, `heatmaps/`), so an evaluate stage rescores them with its own
  `point` mode;
- semantic segmentation, where the images have COCO instances: the heatmap of every category's name,
  thresholded, against the category's instance masks: mAP at IoU 0.3 / 0.4 / 0.5, as the reference.

Pictures in the run directory: `pointing.png` (sample images with each phrase's heatmap, its box and the point) and
`samples/NN.png` (one image per file, every phrase).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.common.figures import plot_recall
from models.common.tasks import Pairs, RecallSection
from pipeline.cache import hash_key
from pipeline.registry import register_task
from pipeline.store import FeatureStore
from pipeline.training.base import TrainError, atomic_json, atomic_save
from pipeline.training.figures import save_figure
from pipeline.training.sections import Row, Section, chart, details
from pipeline.training.tasks import Unit, annotations_digest

if TYPE_CHECKING:
    from models.common.items import Items
    from pipeline.context import Context
    from pipeline.datasets import Clip, Manifest
    from pipeline.query import RunQueries
    from pipeline.training.base import RunKeys

IMAGES_PER_BATCH = 32  # act maps of this many images at once: 32 x 2400 x 13 x 13 floats = 52 MB


def _image_size(clip: "Clip") -> tuple[int, int]:
    """(W, H) of a clip's image: from the manifest, else read from the file's header."""
    if clip.image_size:
        return int(clip.image_size[0]), int(clip.image_size[1])
    from PIL import Image

    with Image.open(clip.media["image"]) as im:
        return im.size


class GroundingSection(Section):
    """Grounding runs: pointing accuracy beside the centre baseline, segmentation mAP, and the heatmap pictures."""

    order, text_order = 4, 2

    def accepts(self, row: Row) -> bool:
        return bool(row["metrics"].get("pointing") or row["metrics"].get("segmentation"))

    def text(self, rows: list[Row]) -> list[str]:
        out = []
        for r in rows:
            pt = r["metrics"].get("pointing")
            if pt:
                out.append(f"{r['dataset']}: {r['stage']} ({r['features']}): pointing game {100 * pt['accuracy']:.1f}% "
                           f"(centre {100 * pt['centre_baseline']:.1f}%) over {pt['n_phrases']} phrases, "
                           f"point = {pt['point']}")
        return out

    def html(self, rows: list[Row]) -> str:
        e = html.escape
        body, pictures = [], []
        for r in rows:
            p, sg = r["metrics"].get("pointing") or {}, r["metrics"].get("segmentation") or {}
            point = (f"<td class='num'>{100 * p['accuracy']:.1f}%</td><td class='num'>{100 * p['centre_baseline']:.1f}"
                     f"%</td><td class='num'>{p['n_phrases']}</td><td>{e(p['point'])}</td>") if p else "<td></td>" * 4
            seg = "".join(f"<td class='num'>{sg[k]:.3f}</td>" for k in ("map@0.3", "map@0.4", "map@0.5")) if sg else \
                "<td></td>" * 3
            body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td class='wrap'>{e(r['features'])}"
                        f"</td>{point}{seg}<td>{details(r)}</td></tr>")
            run_dir = Path(r["run_dir"])
            shown = [q for q in (run_dir.parent / "pointing.png", run_dir / "pointing.png") if q.exists()][:1]
            if shown:
                pictures.append(f"<h3>{e(r['dataset'])} / {e(r['stage'])}</h3>" + chart(shown[0]))
        return ("<h2>Phrases on images: pointing game and segmentation</h2><p>Pointing: a phrase hits when its heatmap's "
                "maximum lies inside its box (Visual Genome regions); centre = always pointing at the image centre. "
                "Segmentation: each COCO category name's thresholded heatmap against its instance masks, mAP at IoU "
                "0.3 / 0.4 / 0.5 (the reference's AP).</p><table><tr><th>dataset</th><th>stage</th><th>features</th>"
                "<th>pointing</th><th>centre</th><th>phrases</th><th>point</th><th>mAP@0.3</th><th>@0.4</th>"
                "<th>@0.5</th><th></th></tr>" + "".join(body) + "</table>" + "".join(pictures))


@register_task
class Grounding(Pairs):
    """Pairs whose phrases have boxes (or images COCO instances); Recall@K, the pointing game, segmentation mAP."""

    name = "grounding"
    digest_field = "grounding"
    plot_file, plot_label = "pointing.png", "phrase heatmaps"
    sections = (RecallSection, GroundingSection)

    explains = ("text",)

    def __init__(self) -> None:
        self.annotations: dict[str, Path] = {}

    def explain(self, queries: "RunQueries", query: str, out: Path, picture: Path | None = None,
                item: str | None = None) -> dict[str, Any]:
        """The phrase's heatmap over the picture, drawn as the run's pointing figures are (`draw_heatmap`), with
        the pointing game's point: its peak."""
        if picture is None:
            raise ValueError("a phrase is drawn over a picture: give one")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from PIL import Image

        from models.dsve.heatmaps import heatmap

        trainer = queries.trainer
        act = trainer.act_maps(queries.picture_items([picture]), np.array([0]))[0]
        heat = heatmap(act, queries.texts([query])[0], trainer.fc_weight(), int(trainer.config.pointing_nmax))
        with Image.open(picture) as im:
            pic = np.asarray(im.convert("RGB"))
        scored = json.loads((queries.run_dir / "metrics.json").read_text()).get("pointing") or {}
        point = str(scored.get("point", "corner"))  # as the run's pointing game scored it
        fig, ax = plt.subplots(figsize=(5, 5))
        px, py = draw_heatmap(ax, heat, pic, query[:60], point)
        save_figure(fig, out, "", dpi=90)
        return {"peak": [px, py], "heatmap_shape": list(heat.shape), "n_max": int(trainer.config.pointing_nmax)}

    def applies(self, manifest: "Manifest") -> str | None:
        if not manifest.annotations and not any(c.box is not None for c in manifest.clips):
            return ("it scores phrase heatmaps against boxes (Visual Genome regions) or object masks (COCO instances); "
                    "this dataset has neither")
        return super().applies(manifest)

    def digest(self, ctx: "Context") -> str:
        assert ctx.manifest is not None
        return hash_key([super().digest(ctx), [(c.box, c.image_size) for c in ctx.manifest.clips], annotations_digest(ctx)])

    def annotate(self, clips: list["Clip"], manifest: "Manifest") -> dict[str, Any]:
        self.annotations = dict(manifest.annotations)
        return super().annotate(clips, manifest)

    def save_unit(self, run_dir: Path, unit: Unit, trainer: Any, test: "Items", seconds: float) -> None:
        """As `pairs`; but held-out items that are all phrases with boxes (Visual Genome regions) are no captions to
        rank: no Recall@K and no test embeddings for them (VG's ~860k phrases x 17k images would not fit)."""
        if test.media and all(c.box is not None for c in test.media):
            atomic_save(trainer.state_dict(), run_dir / "model.pt")
            return
        super().save_unit(run_dir, unit, trainer, test, seconds)

    def write_stores(self, ctx: "Context", rk: "RunKeys", trainer: Any, items: "Items", units: list[Unit]) -> None:
        """Heatmaps of the test phrases that have boxes (a store: one `[h, w]` map per phrase), the segmentation
        IoUs of the test images that have instances, and what scoring them needs (`grounding.json`)."""
        from pipeline.training.run import write_embedding_store

        test = items.subset(units[0].test)
        n_max = int(trainer.config.pointing_nmax)
        boxed = np.array([i for i, c in enumerate(test.media) if c.box is not None], dtype=np.int64)
        records = []
        if len(boxed):
            heats = phrase_heatmaps(trainer, test, boxed, n_max)
            write_embedding_store(ctx, rk, "heatmaps", [test.ids[int(i)] for i in boxed], heats,
                                  "the best validation epoch", row="heatmap row (x columns)",
                                  path=rk.run_dir / "heatmaps")
            for i in boxed:
                c = test.media[int(i)]
                records.append({"clip_id": c.clip_id, "image_id": c.group, "text": c.text[0] if c.text else "",
                                "box": [float(v) for v in c.box], "image_size": list(_image_size(c)),
                                "image": str(c.media.get("image", ""))})
        segmentation = segmentation_ious(trainer, test, self.annotations) if self.annotations else None
        atomic_json(rk.run_dir / "grounding.json", {"n_max": n_max, "items": records, "segmentation": segmentation})

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        out = super().metrics(run_dir, params) if (run_dir / "test_embeddings.npz").exists() else {}
        spec = json.loads((run_dir / "grounding.json").read_text())
        if spec["items"]:
            out["pointing"] = score_pointing(run_dir, spec, str(params.get("point", "corner")))
        if spec.get("segmentation"):
            from models.dsve.heatmaps import segmentation_map

            ious = {k: [tuple(x) for x in v] for k, v in spec["segmentation"]["ious"].items()}
            maps = segmentation_map(ious, (0.3, 0.4, 0.5))
            out["segmentation"] = {"map@0.3": maps[0], "map@0.4": maps[1], "map@0.5": maps[2],
                                   "n_images": spec["segmentation"]["n_images"],
                                   "c_thresh": spec["segmentation"]["c_thresh"]}
        return out

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        ranked = {name: d for name, (d, m) in runs.items() if "rsum" in m}
        if ranked:
            plot_recall(ranked, path / "recall_curve.png", title)
        for name, (run_dir, m) in runs.items():
            if "pointing" not in m:
                continue
            suffix = "" if len(runs) == 1 else f"-{name}"
            plot_pointing(run_dir, m, path / f"pointing{suffix}.png", path / f"samples{suffix}",
                          f"{title}: {name}" if suffix else title, str(m["pointing"]["point"]))
        first = next(iter(runs))
        return path / (self.plot_file if len(runs) == 1 else f"pointing-{first}.png")

    def line(self, metrics: dict[str, Any]) -> str:
        tail = ""
        p = metrics.get("pointing")
        if p:
            tail += (f"; pointing {100 * p['accuracy']:.1f}% (centre {100 * p['centre_baseline']:.1f}%) over "
                     f"{p['n_phrases']} phrases")
        s = metrics.get("segmentation")
        if s:
            tail += f"; segmentation mAP@0.3/0.4/0.5 {s['map@0.3']:.3f}/{s['map@0.4']:.3f}/{s['map@0.5']:.3f}"
        if "rsum" not in metrics:
            return tail[2:] or "no phrase with a box and no image with instances was scored"
        return super().line(metrics) + tail

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        ranked = {name: m for name, m in runs.items() if "rsum" in m}
        lines = [f"{'stage':<18} {'pointing':>9} {'centre':>7} {'phrases':>8} {'seg mAP@0.3':>12} {'@0.4':>6} {'@0.5':>6}"]
        for name, m in runs.items():
            p, s = m.get("pointing") or {}, m.get("segmentation") or {}
            lines.append(f"{name:<18} " + (f"{100 * p['accuracy']:8.1f}% {100 * p['centre_baseline']:6.1f}% "
                                           f"{p['n_phrases']:>8}" if p else f"{'':>9} {'':>7} {'':>8}")
                         + (f" {s['map@0.3']:12.3f} {s['map@0.4']:6.3f} {s['map@0.5']:6.3f}" if s else ""))
        return (super().table(ranked) + "\n\n" if ranked else "") + "\n".join(lines)


def _by_image(items: "Items", idx: np.ndarray) -> dict[int, list[int]]:
    """The item indices `idx` grouped by their image (group), in first-seen order."""
    assert items.group_of is not None
    groups: dict[int, list[int]] = {}
    for i in idx:
        groups.setdefault(int(items.group_of[int(i)]), []).append(int(i))
    return groups


def phrase_heatmaps(trainer: Any, items: "Items", idx: np.ndarray, n_max: int) -> np.ndarray:
    """Each item's phrase heatmap over its own image, `[len(idx), h, w]` (in `idx` order)."""
    from models.dsve.heatmaps import heatmaps

    texts = items.data["text"].texts
    row = {int(i): k for k, i in enumerate(idx)}
    fc = trainer.fc_weight()
    by_image = list(_by_image(items, idx).items())
    out: np.ndarray | None = None
    for a in range(0, len(by_image), IMAGES_PER_BATCH):  # phrase embeddings per chunk: VG has ~860k phrases
        chunk = by_image[a:a + IMAGES_PER_BATCH]
        maps = trainer.act_maps(items, np.array([g for g, _ in chunk], dtype=np.int64))
        members_all = [i for _, members in chunk for i in members]
        emb = dict(zip(members_all, trainer.text_embeddings([texts[i] for i in members_all])))
        for act, (_, members) in zip(maps, chunk):
            rows = [row[i] for i in members]
            h = heatmaps(act, np.stack([emb[i] for i in members]), fc, n_max)
            if out is None:
                out = np.zeros((len(idx), *h.shape[1:]), dtype=np.float32)
            out[rows] = h
    assert out is not None
    return out


def score_pointing(run_dir: Path, spec: dict[str, Any], point: str) -> dict[str, Any]:
    """Pointing-game accuracy of a run's stored heatmaps (`point`: corner or center), and the centre baseline."""
    from models.dsve.heatmaps import centre_baseline, pointing_from_heatmaps

    if point not in ("corner", "center"):
        raise TrainError(f"point must be corner or center, got {point!r}")
    store = FeatureStore(run_dir / "heatmaps")
    hits, centre = [], []
    for it in spec["items"]:
        box = np.asarray([it["box"]], dtype=np.float64)
        size = tuple(it["image_size"])
        hits.append(bool(pointing_from_heatmaps(np.asarray(store[it["clip_id"]])[None], box, size, point=point)[0]))
        centre.append(bool(centre_baseline(box, size)[0]))
    return {"accuracy": float(np.mean(hits)), "centre_baseline": float(np.mean(centre)), "n_phrases": len(hits),
            "n_images": len({it["image_id"] for it in spec["items"]}), "point": point, "n_max": spec["n_max"]}


def segmentation_ious(trainer: Any, items: "Items", annotations: dict[str, Path], c_thresh: float = 0.45,
                      out_dim: tuple[int, int] = (200, 200)) -> dict[str, Any] | None:
    """The reference's semantic segmentation: for every test image with COCO instances and every category, the
    IoU of the category name's thresholded heatmap with the category's masks ((0, 0) where it is absent)."""
    from models.dsve.heatmaps import annotated_categories, binary_heatmap, category_sentence, instance_mask, iou
    from models.vgs.alignment import load_masks

    sources = [load_masks(p) for _, p in sorted(annotations.items())]
    categories = list(dict.fromkeys(c for m in sources for c in m.categories))
    concept = dict(zip(categories, trainer.text_embeddings([category_sentence(c) for c in categories])))
    fc = trainer.fc_weight()
    found = []
    for g, gid in enumerate(items.groups):
        image_id = int(gid) if str(gid).isdigit() else None
        src = next((m for m in sources if image_id is not None and image_id in m.coco.imgs), None)
        if src is not None:
            found.append((g, image_id, src))
    if not found:
        return None
    ious: dict[str, list[list[float]]] = {c: [] for c in categories}
    for a in range(0, len(found), IMAGES_PER_BATCH):
        chunk = found[a:a + IMAGES_PER_BATCH]
        maps = trainer.act_maps(items, np.array([g for g, _, _ in chunk], dtype=np.int64))
        for act, (_, image_id, src) in zip(maps, chunk):
            present = set(annotated_categories(src, image_id))  # crowd regions count, as the reference's
            for c in categories:
                if c in present:
                    hm = binary_heatmap(act, concept[c], fc, c_thresh, out_dim)
                    ious[c].append([float(iou(hm, instance_mask(src, image_id, c, out_dim))), 1])
                else:
                    ious[c].append([0.0, 0])
    return {"ious": ious, "n_images": len(found), "c_thresh": c_thresh, "out_dim": list(out_dim)}


def plot_pointing(run_dir: Path, m: dict[str, Any], path: Path, samples: Path, title: str, point: str,
                  n_images: int = 4, per_image: int = 4) -> None:
    """Sample images with phrase heatmaps (bilinear over the image), the phrase's box and the heatmap's point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from models.dsve.heatmaps import pointing_from_heatmaps

    spec = json.loads((run_dir / "grounding.json").read_text())
    store = FeatureStore(run_dir / "heatmaps")
    by_image: dict[str, list[dict[str, Any]]] = {}
    for it in spec["items"]:
        by_image.setdefault(it["image_id"], []).append(it)
    chosen = list(by_image.items())[:n_images]
    if not chosen:
        return

    def draw(ax: Any, it: dict[str, Any], picture: np.ndarray) -> None:
        heat = np.asarray(store[it["clip_id"]], dtype=np.float64)
        W, H = it["image_size"]
        hit = bool(pointing_from_heatmaps(heat[None], np.asarray([it["box"]]), (W, H), point=point)[0])
        x, y, w, h = it["box"]
        sx, sy = picture.shape[1] / W, picture.shape[0] / H
        draw_heatmap(ax, heat, picture, f"{it['text'][:40]}\n{'hit' if hit else 'miss'}", point,
                     box=((x * sx, y * sy, w * sx, h * sy), "lime" if hit else "red"))

    pictures = {}
    for image_id, its in chosen:
        with Image.open(its[0]["image"]) as im:
            pictures[image_id] = np.asarray(im.convert("RGB"))

    cols = min(per_image, max(len(v) for _, v in chosen))
    fig, axes = plt.subplots(len(chosen), cols, figsize=(2.6 * cols, 2.8 * len(chosen)), squeeze=False)
    for row, (image_id, its) in zip(axes, chosen):
        pic = pictures[image_id]
        for ax, it in zip(row, its[:cols]):
            draw(ax, it, pic)
        for ax in row[len(its[:cols]):]:
            ax.axis("off")
    p = m["pointing"]
    save_figure(fig, path, f"{title}\npointing {100 * p['accuracy']:.1f}% (centre "
                                   f"{100 * p['centre_baseline']:.1f}%), point = {point}", dpi=90)
    samples.mkdir(parents=True, exist_ok=True)
    for k, (image_id, its) in enumerate(chosen):
        pic = pictures[image_id]
        fig, axes = plt.subplots(1, len(its), figsize=(2.6 * len(its), 2.9), squeeze=False)
        for ax, it in zip(axes[0], its):
            draw(ax, it, pic)
        save_figure(fig, samples / f"{k:02d}.png", f"image {its[0]['image_id']}", dpi=90)


def draw_heatmap(ax: Any, heat: np.ndarray, picture: np.ndarray, title: str, point: str,
                 box: tuple[tuple[float, float, float, float], str] | None = None) -> tuple[float, float]:
    """A phrase's heatmap over a picture (bilinear, jet, 45 %), its scored point (a white cross) and, given, a box
    `((x, y, w, h) in picture pixels, colour)`; returns the point. The run's figures and `pipeline serve` draw with
    this."""
    import matplotlib.pyplot as plt

    from models.dsve.heatmaps import heatmap_points
    from models.vgs.alignment import resize_bilinear

    ax.imshow(picture)
    ax.imshow(resize_bilinear(np.asarray(heat, np.float64), (picture.shape[0], picture.shape[1])), cmap="jet",
              alpha=0.45)
    if box is not None:
        (x, y, w, h), colour = box
        ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, lw=2, color=colour))
    px, py = heatmap_points(np.asarray(heat)[None], (picture.shape[1], picture.shape[0]), point)
    ax.plot(px[0], py[0], marker="x", color="white", ms=10, mew=3)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return float(px[0]), float(py[0])
