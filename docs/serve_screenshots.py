"""The screenshots of docs/serve.md: `pipeline serve` over a cache holding the See-Hear-Read demo run (spoken-shapes)
and the DSVE-loc demo run (scenes-captions), driven in Debian's Chromium at 1300 px.

    PIPELINE_CACHE=/path/to/cache .venv/bin/python docs/serve_screenshots.py
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.config import load_config  # noqa: E402
from pipeline.datasets.spoken_scenes import _draw, _scene  # noqa: E402
from pipeline.runner.stagekeys import make_adapter  # noqa: E402
from tests.serving import chromium, served  # noqa: E402

OUT = ROOT / "docs" / "img"


def main() -> None:
    cache = Path(os.environ.get("PIPELINE_CACHE", ROOT / ".pipeline-cache"))
    cfg = load_config(ROOT / "stages.yaml", cache=str(cache))
    shr = next((cache / "runs" / "spoken-shapes").glob("see-hear-read-*"))
    dsve = next((cache / "runs" / "scenes-captions").glob("dsve-*"))
    test = [c for c in make_adapter(cfg, "spoken-shapes").manifest().clips if c.split == "test"]
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bg, shapes = _scene(np.random.default_rng(7), 224, "per_shape")
        while not any(s["shape"] == "circle" for s in shapes):
            bg, shapes = _scene(np.random.default_rng(len(shapes) + 100), 224, "per_shape")
        scene = Path(tmp) / "scene.jpg"
        _draw(scene, bg, shapes, 224, 1, 0)
        with served(ROOT / "stages.yaml", "--cache", str(cache)) as base, chromium() as page:
            page.goto(base + "/runs")
            page.screenshot(path=str(OUT / "serve-runs.png"))
            page.goto(f"{base}/runs/spoken-shapes/{shr.name}")
            page.screenshot(path=str(OUT / "serve-run.png"))
            page.fill("#text-search input[name=q]", test[3].text[0])
            page.click("#text-search button")
            page.screenshot(path=str(OUT / "serve-text-to-images.png"), full_page=True)
            page.goto(f"{base}/runs/spoken-shapes/{shr.name}")
            page.set_input_files("#audio-search input[type=file]", str(test[3].media["audio"]))
            page.select_option("#audio-search select[name=to]", "text")
            page.click("#audio-search button")
            page.screenshot(path=str(OUT / "serve-wav-to-texts.png"))
            page.goto(f"{base}/runs/scenes-captions/{dsve.name}")
            page.fill("#explain input[name=q]", "a red circle")
            page.set_input_files("#explain input[type=file]", str(scene))
            page.click("#explain button")
            page.screenshot(path=str(OUT / "serve-explain.png"))
            page.goto(f"{base}/runs/spoken-shapes/{shr.name}/search?q=&to=image")
            page.screenshot(path=str(OUT / "serve-error.png"))
    for p in sorted(OUT.glob("serve-*.png")):
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
