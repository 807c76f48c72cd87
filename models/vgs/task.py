"""The `localization` task: paired items (spoken captions of images, as `pairs`) whose words carry timings and
whose images carry object annotations (COCO instances). It trains and selects like `pairs` and scores
Recall@K; it also keeps the AV tensor of every test utterance with its own image (a store,
`av_tensors/`) and scores how the model's attention aligns each spoken word naming an object with
that object: glancing and alignment scores (models/vgs/alignment.py) per category, beside the reference's
random-tensor baseline, and the confusion matrix of spoken categories against annotated ones.

Pictures in the run directory: `alignment.png` (scores per category against the random baseline),
`confusion.png` (the heatmap) and `samples/*.png` (an image with each spoken noun's attention over it,
and the word timeline below).
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
from pipeline.training.base import TrainError, atomic_json
from pipeline.training.figures import save_figure
from pipeline.training.sections import Row, Section, chart, details
from pipeline.training.tasks import Unit, annotations_digest

if TYPE_CHECKING:
    from models.common.items import Items
    from pipeline.context import Context
    from pipeline.datasets import Clip, Manifest
    from pipeline.query import RunQueries
    from pipeline.training.base import RunKeys

SCORE_NAMES = ("gs_object", "gs_word", "as_object", "as_word")


class AlignmentSection(Section):
    """Localization runs: the four scores over all words beside the random baseline, then each run's confusion
    heatmap and first sample picture."""

    order, text_order = 3, 4

    def accepts(self, row: Row) -> bool:
        return bool(row["metrics"].get("alignment", {}).get("n_words"))

    def html(self, rows: list[Row]) -> str:
        e = html.escape
        names = ("gs_object", "as_object", "gs_word", "as_word")
        body, pictures = [], []
        for r in rows:
            al = r["metrics"]["alignment"]
            o = al["overall"]
            cells = "".join(f"<td class='num'>{o[k]:.3f} <span class='rand'>("
                            f"{o.get('random_' + k, float('nan')):.3f})</span></td>" for k in names)
            body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td class='wrap'>{e(r['features'])}"
                        f"</td><td class='num'>{al['n_words']}</td>{cells}<td>{details(r)}</td></tr>")
            run_dir = Path(r["run_dir"])
            shown = [p for p in (run_dir / "confusion.png", run_dir / "samples" / "00.png") if p.exists()]
            if shown:
                pictures.append(f"<h3>{e(r['dataset'])} / {e(r['stage'])}</h3>" + "".join(chart(p) for p in shown))
        heads = "".join(f"<th>{k.replace('_', ' ').upper()}</th>" for k in names)
        return ("<h2>Spoken words on objects: alignment and glancing scores</h2><p>Per spoken word that names an "
                "annotated object: GS = share of attention mass on the object (object) or in the word's frames (word); "
                "AS = the same share per frame or per pixel, averaged. In brackets: the same score of a uniform random "
                "tensor (the reference's baseline).</p><table><tr><th>dataset</th><th>stage</th><th>features</th>"
                f"<th>words</th>{heads}<th></th></tr>" + "".join(body) + "</table>" + "".join(pictures))


@register_task
class Localization(Pairs):
    """Pairs whose words are timed and whose images have object masks; Recall@K and alignment scores."""

    name = "localization"
    digest_field = "localization"
    plot_file, plot_label = "alignment.png", "alignment scores"
    sections = (RecallSection, AlignmentSection)

    def __init__(self) -> None:
        self.annotations: dict[str, Path] = {}
        self.scored: dict[Path, list[dict[str, Any]]] = {}  # run dir -> its word records, for `plot`

    def applies(self, manifest: "Manifest") -> str | None:
        if not manifest.annotations:
            return ("it scores attention against object annotations; this dataset has no COCO instances file "
                    "(annotations/instances_<split>.json)")
        if not any(c.words for c in manifest.clips):
            return "it scores spoken words against objects; this dataset's captions carry no word timings"
        return super().applies(manifest)

    def digest(self, ctx: "Context") -> str:
        assert ctx.manifest is not None
        return hash_key([super().digest(ctx), [list(c.words) for c in ctx.manifest.clips], annotations_digest(ctx)])

    def annotate(self, clips: list["Clip"], manifest: "Manifest") -> dict[str, Any]:
        self.annotations = dict(manifest.annotations)
        return super().annotate(clips, manifest)

    def write_stores(self, ctx: "Context", rk: "RunKeys", trainer: Any, items: "Items", units: list[Unit]) -> None:
        """The AV tensors of the test items (a store, rows = speech frames) and what scoring them needs."""
        from pipeline.training.run import write_embedding_store

        test = items.subset(units[0].test)
        tensors = trainer.av_tensors(test)
        write_embedding_store(ctx, rk, "av_tensors", list(test.ids), tensors, "the best validation epoch",
                              row="speech frame of the item (x image cells)", path=rk.run_dir / "av_tensors")
        lengths = test.data["speech"].lengths
        atomic_json(rk.run_dir / "localization.json", {
            "instances": {s: str(p) for s, p in self.annotations.items()},
            "max_frames": int(trainer.config.max_frames),
            "items": [{"clip_id": c.clip_id, "image_id": int(c.group), "split": c.split, "n_frames": int(n),
                       "words": [list(w) for w in c.words], "image": str(c.media.get("image", ""))}
                      for c, n in zip(test.media, lengths)]})

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        out = super().metrics(run_dir, params)
        scored = scored_before(run_dir, params) or score_run(run_dir, params)
        out["alignment"] = scored["summary"]
        self.scored[run_dir] = scored["words"]
        return out

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        from models.vgs.alignment import SCALE_T

        plot_recall({name: d for name, (d, _) in runs.items()}, path / "recall_curve.png", title)
        for name, (run_dir, m) in runs.items():
            al = m.get("alignment")
            if not al:
                continue
            suffix = "" if len(runs) == 1 else f"-{name}"
            words = self.scored.get(run_dir, [])  # what `metrics` scored just before
            atomic_json(path / f"alignment_words{suffix}.json", words)
            (path / f"alignment{suffix}.txt").write_text(alignment_table({name: m}) + "\n")
            plot_alignment(al, path / f"alignment{suffix}.png", f"{title}: {name}" if suffix else title)
            plot_confusion(al, path / f"confusion{suffix}.png", f"{name}: share of attention by annotated category")
            plot_samples(run_dir, words, path / f"samples{suffix}", int(al.get("pictures", 6)), SCALE_T,
                         bool(al.get("softmax", True)))
        first = next(iter(runs))
        return path / (self.plot_file if len(runs) == 1 else f"alignment-{first}.png")

    explains = ("word",)

    def explain_items(self, run_dir: Path, n: int) -> list[dict[str, Any]]:
        from models.vgs.alignment import SCALE_T

        loc = run_dir / "localization.json"
        items = json.loads(loc.read_text())["items"][:n] if loc.is_file() else []
        store = FeatureStore(run_dir / "av_tensors") if items else None
        return [{"clip_id": it["clip_id"], "words": [(k, w) for k, (w, _, _) in enumerate(
                    _spans(it, len(store[it["clip_id"]]) * SCALE_T))]} for it in items if store is not None]

    def explain(self, queries: "RunQueries", query: str, out: Path, picture: Path | None = None,
                item: str | None = None) -> dict[str, Any]:
        """The spatial attention of word number `query` of the scored item `item` over its image, from the run's
        AV tensor and the word's time span, drawn as the run's `samples/` figures are (`draw_word_attention`)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from pipeline.query import QueryError

        from . import alignment as al

        run_dir = queries.run_dir
        spec = {it["clip_id"]: it for it in json.loads((run_dir / "localization.json").read_text())["items"]}
        if item not in spec:
            raise QueryError(f"item '{item}' is not among the {len(spec)} items this run scored (its test split)")
        softmax = bool((json.loads((run_dir / "metrics.json").read_text()).get("alignment") or {}).get("softmax", True))
        sa, _ = al.source_maps(FeatureStore(run_dir / "av_tensors")[item], None, softmax)
        spans = _spans(spec[item], len(sa) * al.SCALE_T)
        if not query.isdigit() or int(query) >= len(spans):
            raise QueryError(f"item '{item}' has words 0 to {len(spans) - 1} within the frames the model heard")
        word, on, off = spans[int(query)]
        img = _picture(picture if picture is not None else spec[item]["image"], sa.shape[2] * al.SCALE_HW)
        fig, ax = plt.subplots(figsize=(5, 5))
        x, y = draw_word_attention(ax, img, sa, on, off, al.SCALE_T, f"'{word}' ({on / 100:.2f}-{off / 100:.2f} s)")
        save_figure(fig, out, item, dpi=90)
        return {"peak": [x, y], "word": word, "onset": on, "offset": off}

    def line(self, metrics: dict[str, Any]) -> str:
        al = metrics.get("alignment", {})
        tail = ""
        if al.get("n_words"):
            o = al["overall"]
            tail = (f"; GS object {o['gs_object']:.3f} (random {o['random_gs_object']:.3f}), AS object "
                    f"{o['as_object']:.3f} (random {o['random_as_object']:.3f}) over {al['n_words']} words")
        return super().line(metrics) + tail

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        return super().table(runs) + "\n\n" + alignment_table(runs)


def scoring(params: dict[str, Any]) -> dict[str, Any]:
    """What a run's alignment scores depend on besides the run: the scoring code's version and the params
    (`pictures` only changes how many are drawn)."""
    from models.vgs.alignment import Alignment

    return {"version": Alignment.VERSION, "softmax": bool(params.get("softmax", True)), "seed": int(params.get("seed", 0)),
            "random_baseline": bool(params.get("random_baseline", True)), "word_vectors": params.get("word_vectors")}


def scored_before(run_dir: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """A completed run's own scores when `params` score it the same way, or None: an evaluate stage at the
    defaults then does not draw the random baseline again (~0.1 s per utterance). Never with word vectors, whose
    file may have changed since."""
    how = scoring(params)
    if how["word_vectors"] or not (run_dir / "metrics.json").exists() or not (run_dir / "alignment_words.json").exists():
        return None
    summary = json.loads((run_dir / "metrics.json").read_text()).get("alignment")
    if not summary or summary.get("scoring") != how:
        return None
    instances = json.loads((run_dir / "localization.json").read_text())["instances"].values()
    if not all(Path(p).is_file() for p in instances):
        return None  # moved since the run: scoring anew says so
    summary = {**summary, "pictures": int(params.get("pictures", 6))}
    return {"summary": summary, "words": json.loads((run_dir / "alignment_words.json").read_text())}


def score_run(run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Alignment and glancing scores of a localization run's saved AV tensors (see models/vgs/alignment.py)."""
    from models.common.text import load_word_vectors

    from . import alignment as al

    spec = json.loads((run_dir / "localization.json").read_text())
    masks = {}
    for split, path in spec["instances"].items():
        try:
            masks[split] = al.load_masks(path)
        except FileNotFoundError as e:
            raise TrainError(f"{run_dir}: {e}; the dataset's annotations moved since the run") from None
    vectors = load_word_vectors(params["word_vectors"]) if params.get("word_vectors") else None
    store = FeatureStore(run_dir / "av_tensors")
    rng = np.random.default_rng(int(params.get("seed", 0)))
    words = al.score_utterances(
        ((it, store[it["clip_id"]]) for it in spec["items"]), masks, softmax=bool(params.get("softmax", True)),
        vectors=vectors, rng=rng if params.get("random_baseline", True) else None,
        max_frames=int(spec["max_frames"]))
    categories = next(iter(masks.values())).categories if masks else []
    summary = al.summarize(words, categories)
    summary.update({"softmax": bool(params.get("softmax", True)), "pictures": int(params.get("pictures", 6)),
                    "word_vectors": params.get("word_vectors"), "scoring": scoring(params)})
    return {"summary": summary, "words": words}


def alignment_table(runs: dict[str, dict[str, Any]]) -> str:
    """Per run, per category: words, GS and AS (object, word) with the random baseline in brackets."""
    lines = []
    for name, m in runs.items():
        al = m.get("alignment")
        if not al:
            continue
        head = f"{'category':<16} {'words':>5} " + " ".join(f"{s:>17}" for s in SCORE_NAMES)
        lines += [f"{name}: alignment (random baseline in brackets)", head, "-" * len(head)]
        rows = [(c, r) for c, r in al["per_category"].items() if r["n"]] + [("(all words)", {**al["overall"], "n": al["n_words"]})]
        for c, r in rows:
            cells = " ".join(f"{r[s]:>7.3f} ({r['random_' + s]:.3f})" for s in SCORE_NAMES)
            lines.append(f"{c:<16} {r['n']:>5} {cells}")
    return "\n".join(lines)


def plot_alignment(al: dict[str, Any], path: Path, title: str) -> None:
    """Bars per category of the four scores, each beside its random baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [c for c, r in al["per_category"].items() if r["n"]] + ["(all)"]
    rows = [al["per_category"][c] for c in cats[:-1]] + [al["overall"]]
    fig, axes = plt.subplots(1, 4, figsize=(max(10, 1.0 * len(cats) * 4 / 2), 3.8), sharey=True)
    x = np.arange(len(cats))
    for ax, s in zip(axes, SCORE_NAMES):
        ax.bar(x - 0.2, [r[s] for r in rows], 0.4, label="model")
        ax.bar(x + 0.2, [r["random_" + s] for r in rows], 0.4, color="grey", label="random tensor")
        ax.set_xticks(x, cats, rotation=60 if len(cats) > 6 else 0, fontsize=8)
        ax.set_title(s.replace("_", " ").replace("gs", "GS").replace("as", "AS"))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    save_figure(fig, path, title)


def plot_confusion(al: dict[str, Any], path: Path, title: str) -> None:
    """The confusion heatmap: per spoken category (column), the mean glancing score on each annotated
    category's pixels (rows; the last row: background)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(al["confusion"]["gs_object"], dtype=np.float64)
    cats = list(al["per_category"])
    rows = cats + ["background"]
    n = len(cats)
    side = min(16, 3 + 0.22 * n)
    fig, ax = plt.subplots(figsize=(side + 1.5, side * (n + 1) / max(n, 1)))
    im = ax.imshow(cm, cmap="viridis", vmin=0, vmax=max(1e-9, float(np.nanmax(cm)) if cm.size else 1))
    small = n <= 20
    ax.set_xticks(range(n), cats, rotation=60 if small else 90, fontsize=8 if small else 5)
    ax.set_yticks(range(n + 1), rows, fontsize=8 if small else 5)
    if small:
        for r in range(n + 1):
            for c in range(n):
                if np.isfinite(cm[r, c]):
                    ax.text(c, r, f"{cm[r, c]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if cm[r, c] < 0.6 * np.nanmax(cm) else "black")
    ax.set_xlabel("spoken category")
    ax.set_ylabel("annotated category")
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path, title)


def plot_samples(run_dir: Path, words: list[dict[str, Any]], out: Path, n: int, scale_t: int, softmax: bool) -> None:
    """For the first `n` test utterances that name objects: the image with each named object's spatial
    attention over it (summed over the word's frames), and below the word timeline with each object's
    temporal attention."""
    if n <= 0 or not words:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import alignment as al

    loc = json.loads((run_dir / "localization.json").read_text())
    spec = {it["clip_id"]: it for it in loc["items"]}
    by_clip: dict[str, list[dict[str, Any]]] = {}
    for w in words:
        by_clip.setdefault(w["clip_id"], []).append(w)
    masks = {split: al.load_masks(path) for split, path in loc["instances"].items()}
    store = FeatureStore(run_dir / "av_tensors")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    for k, (cid, mentions) in enumerate(list(by_clip.items())[:n]):
        it = spec[cid]
        s = store[cid]
        sa, ta = al.source_maps(s, None, softmax)
        img = _picture(it["image"], sa.shape[2] * al.SCALE_HW)
        cols = len(mentions) + 1
        fig = plt.figure(figsize=(2.6 * cols, 4.6))
        grid = fig.add_gridspec(2, cols, height_ratios=[2.6, 1.2])
        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(img)
        ax.set_title("image", fontsize=9)
        ax.axis("off")
        colours = plt.cm.tab10(np.arange(len(mentions)) % 10)
        for j, m in enumerate(mentions):
            draw_word_attention(fig.add_subplot(grid[0, j + 1]), img, sa, m["onset"], m["offset"], scale_t,
                                f"'{m['word']}' -> {m['category']}\nGS {m['gs_object']:.2f}  AS {m['as_object']:.2f}",
                                colours[j])
        ax = fig.add_subplot(grid[1, :])
        t = np.arange(len(ta) * scale_t)
        for j, m in enumerate(mentions):
            size = (ta.shape[1] * al.SCALE_HW, ta.shape[2] * al.SCALE_HW)
            mask = al.cell_counts(masks[it["split"]].mask(it["image_id"], m["category"], size), ta.shape[1:])
            curve = np.repeat(ta.reshape(len(ta), -1) @ mask.ravel(), scale_t)
            ax.plot(t, curve / max(curve.max(), 1e-12), color=colours[j], lw=1.2)
            ax.axvspan(m["onset"], m["offset"], color=colours[j], alpha=0.2)
        for (word, on, off) in _spans(it, len(ta) * scale_t):
            ax.text((on + off) / 2, -0.12, word, ha="center", va="top", fontsize=7, rotation=45,
                    transform=ax.get_xaxis_transform())
        ax.set_xlim(0, len(ta) * scale_t)
        ax.set_yticks([])
        ax.set_xlabel("speech frames (10 ms), with each named object's temporal attention", fontsize=8, labelpad=18)
        save_figure(fig, out / f"{k:02d}.png", cid)


def _spans(item: dict[str, Any], max_frames: int) -> list[tuple[str, int, int]]:
    from models.vgs.alignment import word_spans

    return [(w, on, off) for _, w, on, off in word_spans([tuple(x) for x in item["words"]], item["n_frames"], max_frames)]


def draw_word_attention(ax: Any, img: np.ndarray, sa: np.ndarray, onset: int, offset: int, scale_t: int, title: str,
                        colour: Any = None) -> tuple[float, float]:
    """A spoken word's spatial attention (SA summed over the word's frames, normalised, nearest-upsampled) over the
    image; returns its peak in image pixels. The run's `samples/` figures and `pipeline serve` draw with this."""
    from . import alignment as al

    w = al.frame_weights(len(sa), scale_t, onset, offset)
    heat = np.tensordot(w, sa, axes=1)
    heat = al.upsample(heat[None] / max(heat.max(), 1e-12), 1, al.SCALE_HW)[0]
    ax.imshow(img)
    ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8, **({"color": colour} if colour is not None else {}))
    ax.axis("off")
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    return float(x) + 0.5, float(y) + 0.5


def _picture(path: Any, side: int) -> np.ndarray:
    """The item's image resized to the attention grid's pixels (grey when it cannot be read), as the figures show it."""
    from PIL import Image

    try:
        return np.asarray(Image.open(path).convert("RGB").resize((side, side)))
    except OSError:
        return np.full((side, side, 3), 200, np.uint8)
