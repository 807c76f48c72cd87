"""The trainer example of docs/training.md is complete: it registers, trains through the pipeline and scores."""
import re
from pathlib import Path

from pipeline.registry import TRAINERS
from pipeline.runner import run

from .conftest import write_config
from .pipeline.test_train import TRAIN_STAGES, make_tnn_h5, planted

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def test_the_documented_trainer_runs(tmp_path):
    import numpy as np

    code = re.search(r"```python\n# models/pls/trainer.py\n(.*?)```", DOC.read_text(), re.S).group(1)
    if "pls" not in TRAINERS:
        exec(compile(code, str(DOC), "exec"), {"__name__": "models.pls.trainer"})
    rng = np.random.default_rng(0)
    tr, te = planted(96, rng), planted(48, rng)
    make_tnn_h5(tmp_path / "feats" / "vegas_feature.h5", **{f"{k}_train": v for k, v in tr.items()},
                **{f"{k}_test": v for k, v in te.items()})
    stages = {**{k: v for k, v in TRAIN_STAGES.items() if k in ("audio_features", "visual_features")},
              "pls": {"group": "train", "implementation": "pls", "upstream": ["audio_features", "visual_features"],
                      "params": {"n_components": 4}}}
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"feats": {"adapter": "tnn_h5", "root": str(tmp_path / "feats")}}, stages)
    rep = run("train", stage="pls", config=cfg)[-1]
    m = rep.metrics
    assert m["map_audio2visual"]["mean"] > m["chance_map"]["mean"] + 0.1  # the planted classes show
    assert (rep.run_dir / "embeddings" / "audio").is_dir() and (rep.run_dir / "model.pt").exists()


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_every_link_in_the_readme_and_docs_resolves():
    """A moved page or renamed heading breaks a link: every relative link names a file that exists, and every
    #anchor a heading of that file."""
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    bad = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not in code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in {
                    _slug(h) for h in re.findall(r"(?m)^#+ (.+)$", file.read_text())}:
                bad.append(f"{page.name}: {target} (no such heading)")
    assert not bad, bad
    assert (root / "README.md").stat().st_size <= 12000  # a front door: the rest lives in docs/
