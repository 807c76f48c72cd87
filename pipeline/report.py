"""`pipeline report`: every run in the cache in one comparison (terminal and HTML page). Each run's task builds its
rows and declares the sections that show them (`pipeline.training.sections`); this module names no task."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from .registry import TASKS
from .training.base import TrainError, task_name
from .training.sections import Row, Section

log = logging.getLogger(__name__)


def collect(cache: Path, dataset: str | None = None) -> list[Row]:
    """One row per completed train run under cache/runs (optionally one dataset's), newest first per dataset; an
    evaluate stage's table adds rows only for models it applied that were trained on another dataset."""
    rows: list[Row] = []
    for path in sorted((cache / "runs").glob(f"{dataset or '*'}/*/metrics.json")):
        metrics = json.loads(path.read_text())
        info = yaml.safe_load((path.parent / "params.yaml").read_text())
        try:
            task = TASKS.get(task_name(metrics.get("task")))()
        except TrainError as e:  # a plugin's task whose module this stages.yaml does not load
            log.warning("%s left out of the report: %s (add its module under `plugins:`)", path.parent, e)
            continue
        rows.extend(task.report_rows(path.parent, metrics, info))
    rows.sort(key=lambda r: (r["dataset"], -r["completed"]))
    return rows


def _sections(rows: list[Row]) -> list[tuple[Section, list[Row]]]:
    """Each section the rows' tasks declare, with the rows it accepts."""
    kinds: dict[type[Section], None] = {}
    for r in rows:
        kinds.update(dict.fromkeys(TASKS.get(r["task"]).sections))
    out = []
    for kind in kinds:
        section = kind()
        mine = [r for r in rows if kind in TASKS.get(r["task"]).sections and section.accepts(r)]
        if mine:
            out.append((section, mine))
    return out


def format_text(rows: list[Row]) -> str:
    """The comparison tables for a terminal."""
    if not rows:
        return "no completed train runs; run `pipeline run train`"
    return "\n\n".join(block for section, mine in sorted(_sections(rows), key=lambda s: s[0].text_order)
                        for block in section.text(mine))


def templates() -> Any:
    """The Jinja2 templates (pipeline/templates/) of the report page and `pipeline serve`'s pages."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True)


def page_parts(rows: list[Row], chart_dir: Path) -> dict[str, list[str]]:
    """The HTML of the rows' sections (in page order), then per dataset their charts (pictures under chart_dir)."""
    sections = sorted(_sections(rows), key=lambda s: s[0].order)
    parts = [section.html(mine) for section, mine in sections]
    charts = [c for dataset in dict.fromkeys(r["dataset"] for r in rows) for section, mine in sections
              if any(r["dataset"] == dataset for r in mine)
              for c in section.charts(dataset, [r for r in mine if r["dataset"] == dataset], chart_dir)]
    return {"parts": parts, "charts": charts}


def write_html(rows: list[Row], out: Path) -> Path:
    """A self-contained page: each task's sections (params folded, shown on demand), then per dataset the charts of
    every run (PR curves, Recall@K curves) with the chance line, images inlined."""
    out.parent.mkdir(parents=True, exist_ok=True)
    page = templates().get_template("report.html").render(
        title="avpipeline runs", generated=time.strftime("%Y-%m-%d %H:%M"), **page_parts(rows, out.parent))
    out.write_text(page)
    return out
