"""What `pipeline report` shows of a task's runs: rows (one per run, built by the task) and sections (a terminal
table and an HTML section with its charts, declared by the task). `pipeline/report.py` only gathers rows and
renders the sections they name; each task owns how its runs look."""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, ClassVar

Row = dict[str, Any]


class Section:
    """One part of the report: a terminal table and an HTML section (with per-dataset charts) of some rows."""

    order: ClassVar[int] = 100  # place on the HTML page
    text_order: ClassVar[int] = 100  # place in the terminal report

    def accepts(self, row: Row) -> bool:
        """Whether a row of a task that declares this section belongs in it."""
        return True

    def text(self, rows: list[Row]) -> list[str]:
        """Terminal blocks of these rows (each a table or a line)."""
        return []

    def html(self, rows: list[Row]) -> str:
        """The HTML section of these rows ('' for none)."""
        return ""

    def charts(self, dataset: str, rows: list[Row], out_dir: Path) -> list[str]:
        """HTML of the charts of one dataset's rows (pictures written under out_dir)."""
        return []


def run_row(run_dir: Path, metrics: dict[str, Any], info: dict[str, Any], task: str) -> Row:
    """The fields every run's row has: where it ran, on what features, with which params and when."""
    views = info.get("upstream", {})
    return {"dataset": info["dataset"], "stage": info["stage"], "implementation": info["implementation"],
            "params": {k: v for k, v in info["params"].items() if k not in ("protocol", "seed")},
            "features": features_text(views), "random_weights": any(v.get("random_weights") for v in views.values()),
            "completed": metrics.get("completed", 0.0), "run_dir": str(run_dir), "task": task, "metrics": metrics}


def features_text(views: dict[str, Any]) -> str:
    """'vggish + inception_v3 (random weights)': the feature stages a run read."""
    return " + ".join(f"{v['stage']}{' (random weights)' if v.get('random_weights') else ''}" for v in views.values())


def label(rows: list[Row], r: Row) -> str:
    """A run's name in a chart: its stage, with the time when the stage ran more than once."""
    if [x["stage"] for x in rows].count(r["stage"]) == 1:
        return r["stage"]
    return f"{r['stage']} ({time.strftime('%m-%d %H:%M', time.localtime(r['completed']))})"


def params_text(p: dict[str, Any]) -> str:
    """Params as 'k=v, k=v'."""
    return ", ".join(f"{k}={v}" for k, v in p.items())


def details(r: Row) -> str:
    """A folded HTML cell with the run's params and directory."""
    e = html.escape
    params = "".join(f"<div><code>{e(k)}: {e(str(v))}</code></div>" for k, v in r["params"].items()) or "(none)"
    return (f"<details><summary>params</summary>{params}<div class='path'><code>{e(r['run_dir'])}</code>"
            f"</div></details>")


def chart(path: Path) -> str:
    """A PNG inlined as an HTML image."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"
