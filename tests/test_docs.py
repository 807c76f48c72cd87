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

    code = re.search(r"```python\n# models/pls.py\n(.*?)```", DOC.read_text(), re.S).group(1)
    code = code.replace("from .base import", "from models.base import")
    if "pls" not in TRAINERS:
        exec(compile(code, str(DOC), "exec"), {"__name__": "models.pls"})
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
