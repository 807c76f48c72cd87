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
from .training.figures import DIRECTIONS, chance_rsum, recall_table


def collect(cache: Path, dataset: str | None = None) -> list[dict[str, Any]]:
    """One row per completed train run under cache/runs (optionally one dataset's), newest first."""
    rows = []
    for path in sorted((cache / "runs").glob(f"{dataset or '*'}/*/metrics.json")):
        metrics = json.loads(path.read_text())
        captions = task_name(metrics.get("task")) == "pairs" and "rsum" in metrics
        if "folds" not in metrics and not captions:  # an evaluate stage's table, not a train run
            continue
        info = yaml.safe_load((path.parent / "params.yaml").read_text())
        views = info.get("upstream", {})
        row = {"dataset": info["dataset"], "stage": info["stage"], "implementation": info["implementation"],
               "params": {k: v for k, v in info["params"].items() if k not in ("protocol", "seed")},
               "features": " + ".join(f"{v['stage']}{' (random weights)' if v.get('random_weights') else ''}"
                                      for v in views.values()),
               "random_weights": any(v.get("random_weights") for v in views.values()),
               "completed": metrics.get("completed", 0.0), "run_dir": str(path.parent)}
        if captions:
            row.update(task="captions", metrics=metrics, plot=path.parent / "training_curve.png")
            rows.append(row)
            continue
        row.update({"task": "classes", "protocol": metrics["protocol"], "folds": len(metrics["folds"]),
                    "clips": info.get("clips"), "chance": metrics["chance_map"]["mean"],
                    "plot": path.parent / "pr_curve.png"})
        for d in DIRECTIONS:
            row[d] = (metrics[f"map_{d}"]["mean"], metrics[f"map_{d}"]["std"])
            row[f"p@1_{d}"] = metrics.get(f"p@1_{d}", {}).get("mean")
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], -r["completed"]))
    return rows


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
                   + recall_table({(r["stage"] if [x["stage"] for x in mine].count(r["stage"]) == 1
                                    else f"{r['stage']} ({time.strftime('%m-%d %H:%M', time.localtime(r['completed']))})"):
                                   r["metrics"] for r in mine}))
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


def write_html(rows: list[dict[str, Any]], out: Path) -> Path:
    """A self-contained page: the table, then each run's PR curves (PNG inlined)."""
    e = html.escape
    cells, recall = [], []
    for r in rows:
        if r["task"] == "captions":
            m = r["metrics"]
            nums = "".join(f"<td>{m[d][k]:.1f}</td>" for d in ("image2speech", "speech2image")
                           for k in ("r@1", "r@5", "r@10", "medr"))
            chance = chance_rsum(m)
            recall.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td>{e(r['features'])}</td>{nums}"
                          f"<td>{m['rsum']:.1f}</td><td>{chance:.1f}</td><td>{m['n_images']} "
                          f"({e(str(m.get('evaluated_on')))})</td><td><code>{e(_params(r['params']))}</code></td>"
                          f"<td><code>{e(r['run_dir'])}</code></td></tr>")
            continue
        a, v = (f"{r[d][0]:.3f} &plusmn; {r[d][1]:.3f}" for d in DIRECTIONS)
        cells.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(r['stage'])}</td><td>{e(r['implementation'])}</td>"
                     f"<td>{e(r['features'])}</td><td>{a}</td><td>{v}</td><td>{r['chance']:.3f}</td>"
                     f"<td>{e(r['protocol'])} ({r['folds']})</td><td>{r['clips']}</td>"
                     f"<td><code>{e(_params(r['params']))}</code></td><td><code>{e(r['run_dir'])}</code></td></tr>")
    plots = []
    for r in rows:
        if Path(r["plot"]).exists():
            data = base64.b64encode(Path(r["plot"]).read_bytes()).decode()
            what = "training curve" if r["task"] == "captions" else "PR curves"
            plots.append(f"<h3>{e(r['dataset'])} / {e(r['stage'])}</h3><p><code>{e(_params(r['params']))}"
                         f"</code></p><img alt='{what}' src='data:image/png;base64,{data}'>")
    heads = "".join(f"<th>{d} {k}</th>" for d in ("image&rarr;speech", "speech&rarr;image")
                    for k in ("R@1", "R@5", "R@10", "medr"))
    recall_table = (f"<h2>Spoken caption retrieval</h2><p>Recall@K in percent on the test split (Places: val); "
                    f"medr = floor(median rank) + 1; rsum = the six R@K; chance = the rsum of a random ranking.</p>"
                    f"<table><tr><th>dataset</th><th>stage</th><th>features</th>{heads}<th>rsum</th><th>chance</th>"
                    f"<th>test images</th><th>params</th><th>run</th></tr>{''.join(recall)}</table>"
                    if recall else "")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>avpipeline runs</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px}} th{{background:#eee}} img{{max-width:100%}}</style>
</head><body>
<h1>Cross-modal retrieval runs</h1>
<p>MAP: mean &plusmn; std over the protocol's test folds (cosine similarity, relevance = same class).
Chance: the exact expected MAP of a random ranking. Generated {e(time.strftime('%Y-%m-%d %H:%M'))}.</p>
<table><tr><th>dataset</th><th>stage</th><th>method</th><th>features</th><th>MAP audio&rarr;visual</th>
<th>MAP visual&rarr;audio</th><th>chance</th><th>protocol</th><th>clips</th><th>params</th><th>run</th></tr>
{''.join(cells)}
</table>
{recall_table}
{''.join(plots)}
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
