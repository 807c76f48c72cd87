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
    store = pipeline.open_store(first.store_path, dataset="tiny", config=cfg)
    assert store["class00/class00_000"].shape == (1, 128) and store.attrs["random_weights"] is True
    other = run("extract", config=cfg, overrides=["vggish.weights=random:1"])
    assert other[0].computed == 0 and other[1].computed == 6 and other[1].store_path != first.store_path


def test_mixed_sizes_rotation_short_clips_and_images(tmp_path):
    import subprocess

    root = tmp_path / "v"

    def make(name, args):
        (root / "c").mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, "file:" + str(root / "c" / name)],
                       check=True)

    src = ["-f", "lavfi", "-i"]
    make("wide.mp4", src + ["testsrc2=size=160x90:rate=5:duration=2", "-pix_fmt", "yuv420p"])
    make("square.mp4", src + ["testsrc2=size=96x96:rate=5:duration=2", "-pix_fmt", "yuv420p"])
    make("short.mp4", src + ["testsrc2=size=64x48:rate=25:duration=0.2", "-pix_fmt", "yuv420p"])
    make("wide2.mp4", src + ["testsrc2=size=160x90:rate=5:duration=2", "-pix_fmt", "yuv420p"])
    # a phone-style portrait clip: the rotation lives in the container's display matrix
    make("tall.mp4", ["-i", str(root / "c" / "wide2.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90"])
    (root / "c" / "wide2.mp4").unlink()
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"v": {"adapter": "folder", "root": str(root)}},
                       {"inception_v3": {"group": "extract", "implementation": "inception_v3",
                                         "params": {"weights": "random:0", "fps": 1.0}}})
    rep = run("extract", config=cfg)[0]
    assert rep.computed == 4 and not rep.failures, rep.failures
    store = pipeline.open_store(rep.store_path, dataset="v", config=cfg)
    assert store["c/wide"].shape == (2, 2048) and store["c/square"].shape == (2, 2048)
    assert store["c/short"].shape == (1, 2048) and store["c/tall"].shape == (2, 2048)

    from extractors.inception_v3 import InceptionV3, InceptionV3Config
    from pipeline.datasets import Clip
    from pipeline.media import decode_frames

    assert decode_frames(root / "c" / "tall.mp4", 1.0).shape[1:] == (160, 90, 3)  # rotation applied
    still = tmp_path / "still.png"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=80x60",
                    "-frames:v", "1", str(still)], check=True)
    frames = InceptionV3(InceptionV3Config(weights="random:0")).load(Clip("s", {"image": still}))
    assert frames.shape == (1, 299, 299, 3)


def test_frames_are_preprocessed_like_torchvision(tmp_path, clip_factory):
    import torch
    from torchvision.models import Inception_V3_Weights

    from extractors.inception_v3 import InceptionV3, InceptionV3Config
    from pipeline.datasets import Clip
    from pipeline.media import decode_frames

    path = clip_factory(tmp_path / "a.mp4", seconds=1.0)
    ex = InceptionV3(InceptionV3Config(weights="random:0"))
    ours = ex.load(Clip("a", {"video": path}))
    assert ours.shape == (1, 299, 299, 3) and ours.dtype == np.uint8
    frames = torch.from_numpy(decode_frames(path, 1.0)).permute(0, 3, 1, 2)
    reference = Inception_V3_Weights.IMAGENET1K_V1.transforms()(frames)  # resize, crop, normalise
    _, normalize, _ = ex._runtime
    np.testing.assert_allclose(normalize(torch.from_numpy(ours)).numpy(), reference.numpy(), atol=1e-5)


def test_crop_size_scales_the_resize_and_the_maps(tmp_path, clip_factory):
    import pytest
    import torch
    import torchvision.transforms.functional as TF

    from extractors.inception_v3 import InceptionV3, InceptionV3Config
    from extractors.vgg16 import VGG16, VGG16Config
    from pipeline.datasets import Clip
    from pipeline.media import decode_frames

    path = clip_factory(tmp_path / "a.mp4", seconds=1.0)
    ex = VGG16(VGG16Config(weights="random:0", layer="block5_conv3", crop_size=64))
    assert ex.input_size() == (73, 64) and ex.frame_dims() == (4, 4, 512)  # 256:224 kept; 14 x 14 at 224
    ours = ex.load(Clip("a", {"video": path}))
    frames = torch.from_numpy(decode_frames(path, 1.0)).permute(0, 3, 1, 2)
    reference = TF.center_crop(TF.resize(frames, [73], antialias=True), [64]).permute(0, 2, 3, 1).numpy()
    assert ours.shape == (1, 64, 64, 3) and np.array_equal(ours, reference)
    assert ex.compute([ours])[0].shape == (1, 4, 4, 512)
    assert VGG16(VGG16Config(weights="random:0")).input_size() == (256, 224)
    with pytest.raises(ValueError, match="at least 75"):
        InceptionV3(InceptionV3Config(weights="random:0", crop_size=64)).input_size()
    with pytest.raises(ValueError, match="crop_size must be >= 32"):
        VGG16Config(crop_size=16)


def test_a_picture_shared_by_several_clips_goes_through_the_cnn_once(monkeypatch):
    from extractors.vgg16 import VGG16

    ex = VGG16(VGG16.Config(weights="random:0"))
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, size=(1, 224, 224, 3), dtype=np.uint8) for _ in range(2))
    seen = []
    real = VGG16._compute
    monkeypatch.setattr(VGG16, "_compute", lambda self, inputs: seen.append(len(inputs)) or real(self, inputs))
    out = ex.compute([a, b, a.copy(), a, b])
    assert seen == [2]  # two distinct pictures
    assert np.array_equal(out[0], out[2]) and np.array_equal(out[1], out[4]) and not np.array_equal(out[0], out[1])
    assert np.allclose(out[0], real(ex, [a])[0], atol=1e-5)


def test_precision_is_an_identity_param_and_bf16_stays_close_to_fp32(tmp_path, tiny_synthetic_root):
    from pipeline import open_store

    stages = {"vgg16": {"group": "extract", "implementation": "vgg16",
                        "params": {"weights": "random:0", "crop_size": 64}}}
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY}}, stages)
    fp32 = run("extract", config=cfg)[0]
    bf16 = run("extract", config=cfg, overrides=["vgg16.precision=bf16"])[0]
    assert bf16.store_path != fp32.store_path and bf16.computed == 6  # another key: other numbers
    a, b = open_store(fp32.store_path), open_store(bf16.store_path)
    assert b.attrs["precision"] == "bf16" and a.attrs["precision"] == "fp32"
    x, y = a.to_dask().compute().reshape(-1, 4096), b.to_dask().compute().reshape(-1, 4096)
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert not np.array_equal(x, y) and cos.min() > 0.99


def test_resize_whole_squeezes_the_whole_picture_without_a_crop(tmp_path):
    """The VGS reference feeds VGG16 the whole image resized to 224 x 224: the corners stay in the input."""
    from PIL import Image

    from extractors.vgg16 import VGG16, VGG16Config
    from pipeline.datasets import Clip

    img = np.full((200, 400, 3), 128, np.uint8)
    img[:, :40] = (255, 0, 0)  # a red band on the left, cut by a centre crop of the shorter side
    path = tmp_path / "wide.png"
    Image.fromarray(img).save(path)
    whole = VGG16(VGG16Config(weights="random:0", layer="block5_conv3", resize="whole")).load(Clip("w", {"image": path}))
    crop = VGG16(VGG16Config(weights="random:0", layer="block5_conv3")).load(Clip("w", {"image": path}))
    assert whole.shape == crop.shape == (1, 224, 224, 3)
    assert whole[0, 112, :18, 0].min() > 240 and whole[0, 112, :18, 1].max() < 15  # 40 of 400 px -> ~22 of 224
    assert (crop[0, :, :, 0] == 128).mean() > 0.95  # the band falls outside the centre crop
