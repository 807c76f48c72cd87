"""ResNet-152 `layer4` maps (DSVE-loc): side ceil(s / 32), the whole picture squeezed to s x s (aspect ratio not
kept), rows equal to torchvision's layer4 channels last, float16 stores, weights from a file, the size estimate."""
import math

import numpy as np
import pytest
import torch

from extractors.resnet152 import ResNet152, ResNet152Config, _torchvision_names, map_side
from pipeline.datasets import Clip

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _torchvision_trunk(state: dict) -> torch.nn.Module:
    """torchvision's ResNet-152 with `state`, up to layer4 (the reference's `children()[:-2]`), in eval mode."""
    from torchvision.models import resnet152

    net = resnet152(weights=None)
    net.load_state_dict(state)
    return torch.nn.Sequential(*list(net.children())[:-2]).eval()


def _reference(trunk: torch.nn.Module, pictures: np.ndarray) -> np.ndarray:
    """torchvision's layer4 [B, 2048, h, w] of uint8 [B, s, s, 3] pictures, ToTensor + Normalize as the reference."""
    x = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        return trunk(x).numpy()


@pytest.fixture(scope="module")
def busy_weights(tmp_path_factory):
    """A ResNet-152 state dict whose every residual branch and BatchNorm statistic matters, saved with torch.save."""
    from torchvision.models import resnet152

    torch.manual_seed(3)
    net = resnet152(weights=None, zero_init_residual=True)
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                if name.endswith("bn3"):
                    m.weight.fill_(0.2)
    path = tmp_path_factory.mktemp("w") / "resnet152-busy.pth"
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


@pytest.fixture(scope="module")
def wide_picture(tmp_path_factory):
    """A 2:1 picture (192 x 96) with a red band on its left tenth, which a centre crop would cut."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=(96, 192, 3), dtype=np.uint8)
    img[:, :19] = (255, 0, 0)
    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def meta_trunk():
    """The extractor's network on the meta device: shapes propagate, no arithmetic is done."""
    ex = ResNet152(ResNet152Config(weights="random:0"))
    return ex.build(ex.weights).eval().to("meta")


@pytest.mark.parametrize("size", [32, 64, 96, 100, 256, 400, 416])
def test_map_side_is_ceil_size_over_32_as_torchvision_computes_it(size, meta_trunk):
    ex = ResNet152(ResNet152Config(weights="random:0", image_size=size))
    out = meta_trunk(torch.empty(1, 3, size, size, device="meta"))
    assert tuple(out.shape) == (1, *ex.frame_dims()) == (1, math.ceil(size / 32), math.ceil(size / 32), 2048)
    assert ex.output_spec().dims == ex.frame_dims()


def test_the_sizes_dsve_uses():
    assert (map_side(256), map_side(400), map_side(416)) == (8, 13, 13)


def test_wide_picture_is_squeezed_to_a_square_not_cropped(wide_picture, busy_weights):
    """The reference: PIL `Resize((s, s))` (bilinear, the whole picture), ToTensor, Normalize, layer4."""
    from PIL import Image

    path, state = busy_weights
    ex = ResNet152(ResNet152Config(weights=str(path), image_size=96))
    ours = ex.load(Clip("w", {"image": wide_picture}))
    pil = np.array(Image.open(wide_picture).convert("RGB").resize((96, 96), Image.BILINEAR))[None]
    assert ours.shape == pil.shape == (1, 96, 96, 3) and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - pil.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.3  # torchvision's antialiased tensor resize vs PIL's: rounding apart
    assert ours[0, :, :8, 0].min() > 240 and ours[0, :, :8, 1].max() < 15  # the band (19 of 192 px) is kept

    maps = ex.compute([ours])[0]
    assert maps.shape == (1, 3, 3, 2048)  # square, from a 2:1 picture
    reference = _reference(_torchvision_trunk(state), pil).transpose(0, 2, 3, 1)
    scale = np.abs(reference).max()
    assert np.abs(maps - reference).max() < 0.02 * scale  # inputs differ by a level here and there
    assert np.corrcoef(maps.ravel(), reference.ravel())[0, 1] > 0.999


def test_rows_are_torchvision_layer4_channels_last(busy_weights):
    path, state = busy_weights
    ex = ResNet152(ResNet152Config(weights=str(path), image_size=96))
    pictures = np.random.default_rng(1).integers(0, 255, size=(2, 96, 96, 3), dtype=np.uint8)
    ours = ex.compute([pictures])[0]
    reference = _reference(_torchvision_trunk(state), pictures)  # [2, 2048, 3, 3]
    assert ours.shape == (2, 3, 3, 2048) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    swapped = reference.transpose(0, 3, 2, 1)  # rows and columns exchanged: must not pass
    assert not np.allclose(ours, swapped, rtol=1e-4, atol=1e-5)


def test_weights_file_and_cache_dir_give_the_random_seed_features(tmp_path, monkeypatch):
    """random:SEED is torchvision's init (zero_init_residual) seeded with SEED; the same state dict from a file gives
    the same maps; a DSVE-loc WELDON checkpoint's trunk maps onto torchvision's names."""
    from torchvision.models import resnet152

    from extractors.weights import WeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(WeightsError, match="resnet152-394f9c45.pth"):
        ResNet152(ResNet152Config(image_size=64)).weights  # noqa: B018  (resolving is what fails)

    pictures = np.random.default_rng(2).integers(0, 255, size=(2, 64, 64, 3), dtype=np.uint8)
    seeded = ResNet152(ResNet152Config(weights="random:7", image_size=64))
    expected = seeded.compute([pictures])[0]
    torch.manual_seed(7)
    state = resnet152(weights=None, zero_init_residual=True).state_dict()
    path = tmp_path / "mine.pth"
    torch.save(state, path)
    by_file = ResNet152(ResNet152Config(weights=str(path), image_size=64))
    assert by_file.weights.kind == "file" and not by_file.weights.is_random
    np.testing.assert_array_equal(by_file.compute([pictures])[0], expected)

    # the ImageNet name resolves through the shared weights code (tests/extractors/test_weights.py): the file it
    # looks for in the cache directory is torchvision's
    assert ResNet152.pretrained()["imagenet"].files["model"].url.endswith("/resnet152-394f9c45.pth")

    trunk = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    weldon = {f"base_layer.{trunk.index(k.split('.')[0])}.{k.split('.', 1)[1]}": v
              for k, v in state.items() if not k.startswith("fc.")}
    weldon.update({"spaConv.weight": torch.zeros(2400, 2048, 1, 1), "spaConv.bias": torch.zeros(2400),
                   "fc.weight": torch.zeros(1000, 2400), "fc.bias": torch.zeros(1000)})
    # a DSVE-loc WELDON checkpoint's keys land on the trunk (its spaConv and fc are not ResNet's)
    mapped = _torchvision_names({f"module.{k}": v for k, v in weldon.items()})
    assert set(mapped) == set(state) and all(torch.equal(mapped[k], state[k]) for k in state if not k.startswith("fc."))


def test_float16_store_holds_float16_close_to_float32(tmp_path, tiny_synthetic_root):
    import pipeline
    from pipeline.config import key_params
    from pipeline.runner import run

    from ..conftest import TINY, write_config

    base = {"group": "extract", "implementation": "resnet152", "params": {"weights": "random:0", "image_size": 64}}
    half = {**base, "params": {**base["params"], "dtype": "float16"}}
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY}},
                       {"r32": base, "r16": half})
    reports = run("extract", config=cfg)
    assert all(r.computed == 6 and not r.failed for r in reports) and reports[0].store_path != reports[1].store_path
    full, small = (pipeline.open_store(r.store_path, dataset="tiny", config=cfg) for r in reports)
    assert full.attrs["dtype"] == "float32" and small.attrs["dtype"] == "float16"
    assert small.attrs["dims"] == [2, 2, 2048] and small.attrs["image_size"] == 64
    assert small.attrs["layer"] == "layer4" and small.attrs["random_weights"] is True
    x = full["class00/class00_000"]
    y = small["class00/class00_000"]
    assert x.shape == y.shape == (1, 2, 2, 2048) and x.dtype == np.float32 and y.dtype == np.float16
    a, b = full.to_dask().compute(), small.to_dask().compute()
    assert b.dtype == np.float16 and not np.array_equal(a[0], a[1])
    np.testing.assert_allclose(b.astype(np.float32), a, rtol=2e-3, atol=1e-4)
    ex = ResNet152(ResNet152Config(weights="random:0", image_size=64, dtype="float16"))
    assert ex.expected_bytes(6) == b.nbytes == 6 * 2 * 2 * 2048 * 2  # the estimate is what was written
    assert "dtype" not in key_params(ResNet152Config, full.attrs["params"])  # float32 stays out of the key
    assert key_params(ResNet152Config, small.attrs["params"])["dtype"] == "float16"


def test_expected_size_estimate():
    coco = ResNet152(ResNet152Config(weights="random:0", image_size=400, dtype="float16"))
    assert coco.expected_bytes(123_287) == 123_287 * 13 * 13 * 2048 * 2
    assert coco.expected_size(123_287) == "123,287 clips x [13, 13, 2048] float16 = 85.3 GB"
    train = ResNet152(ResNet152Config(weights="random:0", image_size=256))
    assert train.expected_bytes(10, rows_per_clip=3) == 10 * 3 * 8 * 8 * 2048 * 4
    assert train.expected_size(1000) == "1,000 clips x [8, 8, 2048] float32 = 524.3 MB"


def test_float16_overflow_is_refused(monkeypatch):
    ex = ResNet152(ResNet152Config(weights="random:0", image_size=32, dtype="float16"))
    monkeypatch.setattr(ResNet152, "_compute", lambda self, inputs: [np.full((1, 1, 1, 2048), 1e6, np.float32)])
    with pytest.raises(ValueError, match="do not fit float16"):
        ex.compute([np.zeros((1, 32, 32, 3), np.uint8)])


def test_config_checks():
    with pytest.raises(ValueError, match="image_size must be >= 32"):
        ResNet152Config(image_size=16)
    with pytest.raises(ValueError, match="leave crop_size unset"):
        ResNet152Config(crop_size=224)
    assert ResNet152Config().resize == "whole" and ResNet152Config().dtype == "float32"
