"""VGG16 and Inception-V3 stages on the tiny synthetic set (random weights): shapes, fps, pooling,
and that random weights are stated in the store metadata."""
import numpy as np

import pipeline
from pipeline.runner import run

from ..conftest import TINY, write_config


def _project(tmp_path, root, stages):
    return write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                        {"tiny": {"adapter": "synthetic", "root": str(root), "params": TINY}}, stages)


def test_vgg16_and_inception_stores(tmp_path, tiny_synthetic_root):
    cfg = _project(tmp_path, tiny_synthetic_root, {
        "vgg16": {"group": "extract", "implementation": "vgg16",
                  "params": {"weights": "random:0", "fps": 2.0, "layer": "block5_conv3", "pool": "mean"}},
        "inception_v3": {"group": "extract", "implementation": "inception_v3",
                         "params": {"weights": "random:0", "fps": 2.0}}})
    reports = run("extract", config=cfg)
    assert all(r.computed == 6 and not r.failed for r in reports)
    vgg = pipeline.open_store(dataset="tiny", stage="vgg16", config=cfg)
    inc = pipeline.open_store(dataset="tiny", stage="inception_v3", config=cfg)
    assert vgg["class00/class00_000"].shape == (1, 14, 14, 512)  # pooled over frames
    x = inc["class00/class00_000"]
    assert x.shape == (2, 2048) and np.isfinite(x).all()  # 1 s at 2 fps
    assert inc.attrs["fps"] == 2.0 and inc.attrs["frame_rate"] == 2.0 and inc.attrs["random_weights"] is True
    assert vgg.attrs["frame_rate"] is None and vgg.attrs["pool"] == "mean"
    # different classes look different even through a random network
    a, b = inc["class00/class00_000"].mean(0), inc["class01/class01_000"].mean(0)
    assert np.linalg.norm(a - b) > np.linalg.norm(a - inc["class00/class00_001"].mean(0))


def test_vggish_stage_and_weights_in_key(tmp_path, tiny_synthetic_root):
    stages = {"audio": {"group": "extract", "implementation": "audio"},
              "vggish": {"group": "extract", "implementation": "vggish", "upstream": ["audio"],
                         "params": {"weights": "random:0"}}}
    cfg = _project(tmp_path, tiny_synthetic_root, stages)
    first = run("extract", config=cfg)[1]
    store = pipeline.open_store(first.store_path)
    assert store["class00/class00_000"].shape == (1, 128) and store.attrs["random_weights"] is True
    other = run("extract", config=cfg, overrides=["vggish.weights=random:1"])
    assert other[0].computed == 0 and other[1].computed == 6 and other[1].store_path != first.store_path
