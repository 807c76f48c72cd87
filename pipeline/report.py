"""`pipeline report`: every train run in the cache in one comparison table (terminal and HTML page)."""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

import yaml

from .training.base import task_name
from .training.figures import DIRECTIONS, chance_rsum, directions, matrix_table, recall_table


def collect(cache: Path, dataset: str | None = None) -> list[dict[str, Any]]:
    """One row per completed train run under cache/runs (optionally one dataset's), newest first."""
    rows = []
    for path in sorted((cache / "runs").glob(f"{dataset or '*'}/*/metrics.json")):
        metrics = json.loads(path.read_text())
        captions = task_name(metrics.get("task")) in ("pairs", "localization", "grounding") and "rsum" in metrics
        matrix = task_name(metrics.get("task")) == "modalities" and "matrix" in metrics
        if "folds" not in metrics and not captions and not matrix:  # an evaluate stage's table, not a train run ...
            rows.extend(_transferred(path.parent, metrics))  # ... unless it applied another dataset's models
            continue
        info = yaml.safe_load((path.parent / "params.yaml").read_text())
        views = info.get("upstream", {})
        row = {"dataset": info["dataset"], "stage": info["stage"], "implementation": info["implementation"],
               "params": {k: v for k, v in info["params"].items() if k not in ("protocol", "seed")},
               "features": " + ".join(f"{v['stage']}{' (random weights)' if v.get('random_weights') else ''}"
                                      for v in views.values()),
               "random_weights": any(v.get("random_weights") for v in views.values()),
               "completed": metrics.get("completed", 0.0), "run_dir": str(path.parent)}
        if captions or matrix:
            row.update(task="captions" if captions else "modalities", metrics=metrics,
                       plot=path.parent / ("training_curve.png" if captions else "modality_matrix.png"))
            rows.append(row)
            continue
        row.update({"task": "classes", "protocol": metrics["protocol"], "folds": len(metrics["folds"]),
                    "clips": info.get("clips"), "chance": metrics["chance_map"]["mean"], "metrics": metrics,
                    "plot": path.parent / "pr_curve.png"})
        for d in DIRECTIONS:
            row[d] = (metrics[f"map_{d}"]["mean"], metrics[f"map_{d}"]["std"])
            row[f"p@1_{d}"] = metrics.get(f"p@1_{d}", {}).get("mean")
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], -r["completed"]))
    return rows


def _transferred(run_dir: Path, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of an evaluate run that applied models trained on another dataset (`model_dataset`): one per model,
    scored on this run's dataset (the COCO model's pointing game on Visual Genome)."""
    rows = []
    info = yaml.safe_load((run_dir / "params.yaml").read_text())
    for name, m in (metrics.get("runs") or {}).items():
        if not m.get("model_dataset") or not ("rsum" in m or m.get("pointing") or m.get("segmentation")):
            continue
        trained = Path(m.get("run", "")) / "params.yaml"
        ups = (yaml.safe_load(trained.read_text()).get("upstream") or {}) if trained.is_file() else {}
        random = any(v.get("random_weights") for v in ups.values())
        rows.append({"dataset": info["dataset"], "stage": f"{name} ({info['stage']})", "implementation": m["implementation"],
                     "params": dict(info["params"]), "random_weights": random,
                     "features": f"model trained on {m['model_dataset']} ("
                                 + " + ".join(f"{v['stage']}{' (random weights)' if v.get('random_weights') else ''}"
                                              for v in ups.values()) + ")", "completed": metrics.get("completed", 0.0), "run_dir": str(run_dir / name),
                     # Visual Genome's phrases are scored by pointing only (no Recall@K): not a captions row
                     "task": "captions" if "rsum" in m else "grounding", "metrics": m,
                     "plot": run_dir / "recall_curve.png"})
    return rows


def _grounding_section(rows: list[dict[str, Any]]) -> str:
    """Grounding runs: pointing accuracy beside the centre baseline, segmentation mAP, and the heatmap pictures."""
    e = html.escape
    body, pictures = [], []
    for r in rows:
        p, sg = r["metrics"].get("pointing") or {}, r["metrics"].get("segmentation") or {}
        point = (f"<td class='num'>{100 * p['accuracy']:.1f}%</td><td class='num'>{100 * p['centre_baseline']:.1f}%</td>"
                 f"<td class='num'>{p['n_phrases']}</td><td>{e(p['point'])}</td>") if p else "<td></td>" * 4
        seg = "".join(f"<td class='num'>{sg[k]:.3f}</td>" for k in ("map@0.3", "map@0.4", "map@0.5")) if sg else \
            "<td></td>" * 3
        body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td class='wrap'>{e(r['features'])}</td>"
                    f"{point}{seg}<td>{_details(r)}</td></tr>")
        run_dir = Path(r["run_dir"])
        shown = [q for q in (run_dir.parent / "pointing.png", run_dir / "pointing.png") if q.exists()][:1]
        if shown:
            pictures.append(f"<h3>{e(r['dataset'])} / {e(r['stage'])}</h3>" + _chart(shown[0]))
    return ("<h2>Phrases on images: pointing game and segmentation</h2><p>Pointing: a phrase hits when its heatmap's "
            "maximum lies inside its box (Visual Genome regions); centre = always pointing at the image centre. "
            "Segmentation: each COCO category name's thresholded heatmap against its instance masks, mAP at IoU "
            "0.3 / 0.4 / 0.5 (the reference's AP).</p><table><tr><th>dataset</th><th>stage</th><th>features</th>"
            "<th>pointing</th><th>centre</th><th>phrases</th><th>point</th><th>mAP@0.3</th><th>@0.4</th><th>@0.5</th>"
            "<th></th></tr>" + "".join(body) + "</table>" + "".join(pictures))


def _matrix_section(rows: list[dict[str, Any]]) -> str:
    """Runs scored between every two modalities (See, Hear, and Read): median rank per query x target, chance beside."""
    e = html.escape
    body, pictures = [], []
    for r in rows:
        m = r["metrics"]
        cells = "".join(f"<td class='num'>{m['matrix'][d]['medr']:.0f} <span class='rand'>({m['chance'][d]['medr']:.0f})"
                        f"</span><br>{m['matrix'][d]['r@10']:.0f}%</td>" if d in m["matrix"] else "<td></td>"
                        for d in MATRIX_ORDER)
        label = _label(rows, r)
        body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(label)}</td><td class='wrap'>{e(r['features'])}</td>"
                    f"{cells}<td class='num'>{m['n_items']} / {m['n_images']}</td><td>{_details(r)}</td></tr>")
        if Path(r["plot"]).exists():
            pictures.append(f"<h3>{e(r['dataset'])} / {e(label)}</h3>" + _chart(Path(r["plot"])))
    heads = "".join(f"<th>{d.replace('2', '&rarr;')}</th>" for d in MATRIX_ORDER)
    return ("<h2>Image, sound and text: retrieval between every two</h2><p>Median rank of the right answer (chance "
            "in brackets) and R@10, query &rarr; target, on the test split. Text &harr; sound is never trained: "
            "it comes through the images.</p><table><tr><th>dataset</th><th>stage</th><th>features</th>" + heads +
            "<th>items / images</th><th></th></tr>" + "".join(body) + "</table>" + "".join(pictures))


MATRIX_ORDER = ("image2text", "text2image", "image2sound", "sound2image", "text2sound", "sound2text")


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items())


def format_text(rows: list[dict[str, Any]]) -> str:
    """The comparison table for a terminal."""
    if not rows:
        return "no completed train runs; run `pipeline run train`"
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows if r["task"] == "captions"):
        mine = [r for r in rows if r["task"] == "captions" and r["dataset"] == dataset]
        flag = " [random-weight features]" if any(r["random_weights"] for r in mine) else ""
        out.append(f"{dataset}: Recall@K on {mine[0]['metrics'].get('evaluated_on', 'test')}{flag}\n"
                   + recall_table({_label(mine, r): r["metrics"] for r in mine}))
    grounded = [r for r in rows if r["metrics"].get("pointing") and r["task"] in ("captions", "grounding")]
    for r in grounded:
        pt = r["metrics"]["pointing"]
        out.append(f"{r['dataset']}: {r['stage']} ({r['features']}): pointing game {100 * pt['accuracy']:.1f}% "
                   f"(centre {100 * pt['centre_baseline']:.1f}%) over {pt['n_phrases']} phrases, point = {pt['point']}")
    matrices = [r for r in rows if r["task"] == "modalities"]
    if matrices:
        out.append(matrix_table({f"{r['dataset']} / {_label(matrices, r)}": r["metrics"] for r in matrices}))
    rows = [r for r in rows if r["task"] == "classes"]
    if rows:
        out.insert(0, _map_text(rows))
    return "\n\n".join(out)


def _map_text(rows: list[dict[str, Any]]) -> str:
    head = (f"{'dataset':<16} {'stage':<14} {'MAP a->v':>15} {'MAP v->a':>15} {'chance':>7} {'folds':>5}  "
            f"{'when':<16} params")
    lines = [head, "-" * len(head)]
    for r in rows:
        a, v = (f"{r[d][0]:.3f} ± {r[d][1]:.3f}" for d in DIRECTIONS)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["completed"]))
        flag = " [random-weight features]" if r["random_weights"] else ""
        lines.append(f"{r['dataset']:<16} {r['stage']:<14} {a:>15} {v:>15} {r['chance']:>7.3f} {r['folds']:>5}  "
                     f"{when:<16} {_params(r['params'])}{flag}")
    return "\n".join(lines)


def _label(rows: list[dict[str, Any]], r: dict[str, Any]) -> str:
    """A run's name in a chart: its stage, with the time when the stage ran more than once."""
    if [x["stage"] for x in rows].count(r["stage"]) == 1:
        return r["stage"]
    return f"{r['stage']} ({time.strftime('%m-%d %H:%M', time.localtime(r['completed']))})"


def _details(r: dict[str, Any]) -> str:
    e = html.escape
    params = "".join(f"<div><code>{e(k)}: {e(str(v))}</code></div>" for k, v in r["params"].items()) or "(none)"
    return (f"<details><summary>params</summary>{params}<div class='path'><code>{e(r['run_dir'])}</code>"
            f"</div></details>")


def _chart(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"


def _alignment_section(rows: list[dict[str, Any]]) -> str:
    """Localization runs: the four scores over all words beside the random baseline, then each run's
    confusion heatmap and first sample picture."""
    e = html.escape
    names = ("gs_object", "as_object", "gs_word", "as_word")
    body, pictures = [], []
    for r in rows:
        al = r["metrics"]["alignment"]
        o = al["overall"]
        cells = "".join(f"<td class='num'>{o[k]:.3f} <span class='rand'>({o.get('random_' + k, float('nan')):.3f})"
                        f"</span></td>" for k in names)
        body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td class='wrap'>{e(r['features'])}</td>"
                    f"<td class='num'>{al['n_words']}</td>{cells}<td>{_details(r)}</td></tr>")
        run_dir = Path(r["run_dir"])
        shown = [p for p in (run_dir / "confusion.png", run_dir / "samples" / "00.png") if p.exists()]
        if shown:
            pictures.append(f"<h3>{e(r['dataset'])} / {e(r['stage'])}</h3>" + "".join(_chart(p) for p in shown))
    heads = "".join(f"<th>{k.replace('_', ' ').upper()}</th>" for k in names)
    return ("<h2>Spoken words on objects: alignment and glancing scores</h2><p>Per spoken word that names an "
            "annotated object: GS = share of attention mass on the object (object) or in the word's frames (word); AS "
            "= the same share per frame or per pixel, averaged. In brackets: the same score of a uniform random "
            "tensor (the reference's baseline).</p><table><tr><th>dataset</th><th>stage</th><th>features</th>"
            f"<th>words</th>{heads}<th></th></tr>" + "".join(body) + "</table>" + "".join(pictures))


def write_html(rows: list[dict[str, Any]], out: Path) -> Path:
    """A self-contained page: one table per task (params folded, shown on demand), then per dataset one
    chart of every run's PR curves (or Recall@K curves) with the chance line, images inlined."""
    from .training.figures import plot_pr, plot_recall

    e = html.escape
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = []
    classes = [r for r in rows if r["task"] == "classes"]
    if classes:
        body = []
        for r in classes:
            a, v = (f"{r[d][0]:.3f}&nbsp;&plusmn;&nbsp;{r[d][1]:.3f}" for d in DIRECTIONS)
            body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td>{e(r['implementation'])}</td>"
                        f"<td class='wrap'>{e(r['features'])}</td><td class='num'>{a}</td><td class='num'>{v}</td>"
                        f"<td class='num'>{r['chance']:.3f}</td><td>{e(r['protocol'])}&nbsp;({r['folds']})</td>"
                        f"<td class='num'>{r['clips'] if r['clips'] is not None else ''}</td>"
                        f"<td class='num'>{e(time.strftime('%m-%d %H:%M', time.localtime(r['completed'])))}</td>"
                        f"<td>{_details(r)}</td></tr>")
        sections.append(
            "<h2>Labelled clips: cross-modal MAP</h2><p>Mean &plusmn; std over the protocol's test folds (cosine "
            "similarity, relevance = same class); chance = the exact expected MAP of a random ranking.</p>"
            "<table><tr><th>dataset</th><th>stage</th><th>method</th><th>features</th><th>MAP a&rarr;v</th>"
            "<th>MAP v&rarr;a</th><th>chance</th><th>protocol</th><th>clips</th><th>when</th><th></th></tr>"
            + "".join(body) + "</table>")
    pairs = [r for r in rows if r["task"] == "captions"]
    if pairs:
        body = []
        for r in pairs:
            m = r["metrics"]
            nums = "".join(f"<td class='num'>{m[d][k]:.1f}</td>" for d in directions(m)
                           for k in ("r@1", "r@5", "r@10", "medr"))
            body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td class='wrap'>{e(r['features'])}"
                        f"</td>{nums}<td class='num'>{m['rsum']:.1f}</td><td class='num'>{chance_rsum(m):.1f}</td>"
                        f"<td class='num'>{m['n_images']}&nbsp;({e(str(m.get('evaluated_on')))})</td>"
                        f"<td>{_details(r)}</td></tr>")
        heads = "".join(f"<th>{k}</th>" for _ in range(2) for k in ("R@1", "R@5", "R@10", "medr"))
        sections.append(
            "<h2>Paired items: Recall@K</h2><p>Percent of queries whose match ranks in the top K, on the test "
            "split (Places: val); medr = floor(median rank) + 1; rsum = the six R@K; chance = a random "
            "ranking's rsum.</p><table><tr><th rowspan=2>dataset</th><th rowspan=2>stage</th>"
            "<th rowspan=2>features</th><th colspan=4>image &rarr; captions</th><th colspan=4>captions &rarr; image</th>"
            "<th rowspan=2>rsum</th><th rowspan=2>chance</th><th rowspan=2>test images</th><th rowspan=2></th></tr>"
            f"<tr>{heads}</tr>" + "".join(body) + "</table>")
    matrices = [r for r in rows if r["task"] == "modalities"]
    if matrices:
        sections.append(_matrix_section(matrices))
    aligned = [r for r in pairs if r["metrics"].get("alignment", {}).get("n_words")]
    if aligned:
        sections.append(_alignment_section(aligned))
    grounded = [r for r in rows if r["task"] in ("captions", "grounding")
                and (r["metrics"].get("pointing") or r["metrics"].get("segmentation"))]
    if grounded:
        sections.append(_grounding_section(grounded))
    charts = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset and r["task"] == "classes"]
        if mine:
            path = out.parent / f"{dataset}-pr.png"
            plot_pr({_label(mine, r): r["metrics"] for r in mine}, path, f"{dataset}: PR curves of every run",
                    {_label(mine, r): Path(r["run_dir"]) for r in mine})
            charts.append(f"<h3>{e(dataset)}: precision-recall</h3>{_chart(path)}")
        mine = [r for r in rows if r["dataset"] == dataset and r["task"] == "captions"]
        if mine:
            path = out.parent / f"{dataset}-recall.png"
            plot_recall({_label(mine, r): Path(r["run_dir"]) for r in mine}, path,
                        f"{dataset}: Recall@K of every run")
            charts.append(f"<h3>{e(dataset)}: Recall@K</h3>{_chart(path)}")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>avpipeline runs</title>
<style>
body{{font-family:sans-serif;margin:1.5em;max-width:1300px}} h2{{margin-top:1.6em}}
table{{border-collapse:collapse;width:100%;font-size:13px}} td,th{{border:1px solid #ccc;padding:3px 6px;
vertical-align:top;white-space:nowrap}} th{{background:#eee}} td.wrap{{white-space:normal;max-width:18em}}
td.num{{text-align:right;font-variant-numeric:tabular-nums}} details summary{{cursor:pointer;color:#036}}
details div{{white-space:normal}} .path{{color:#666;font-size:11px;word-break:break-all;max-width:26em}}
img{{max-width:100%}} p{{color:#333;font-size:14px;max-width:70em}} .rand{{color:#888}}
</style></head><body>
<h1>Cross-modal retrieval runs</h1>
<p>Every completed train run in the cache, newest first per dataset. Generated
{e(time.strftime('%Y-%m-%d %H:%M'))}. Runs whose features came from networks with random weights say so in the
features column: their numbers show that the pipeline works, not what pretrained features achieve.</p>
{''.join(sections)}
{''.join(charts)}
</body></html>
"""
    out.write_text(page)
    return out
