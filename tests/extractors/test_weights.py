"""Weights resolve by explicit path, then the cache directory, then a download; offline, the error
names the file and where to put it; a loaded file really is what the network computes with."""
import numpy as np
import pytest
import torch

from extractors import weights as W
from extractors.inception_v3 import InceptionV3, InceptionV3Config
from extractors.weights import WeightsError, resolve_weights


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def no_network(url, dst, **kw):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


def _frames(n=2):
    """Frames as `load` hands them to `compute`: resized and centre-cropped to 299 x 299."""
    return np.random.default_rng(0).integers(0, 255, (n, 299, 299, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A randomly initialised Inception-V3 state dict saved like a downloaded checkpoint."""
    torch.manual_seed(7)
    ex = InceptionV3(InceptionV3Config(weights="random:7"))
    net = ex.build(ex.weights)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    import torchvision

    full = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    full.update(state)
    path = tmp_path_factory.mktemp("w") / "inception.pth"
    torch.save(full, path)
    reference = ex.compute([_frames()])[0]
    return path, reference


def test_offline_without_file_names_file_and_place(offline):
    with pytest.raises(WeightsError) as e:
        resolve_weights("imagenet", "inception_v3", InceptionV3.pretrained())
    msg = str(e.value)
    expected = offline / "torch" / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    assert "inception_v3_google-0cc3c7bd.pth" in msg and str(expected) in msg and "random:0" in msg
    assert "download.pytorch.org" in msg


def test_explicit_path_and_cache_dir_are_found(offline, inception_file):
    path, reference = inception_file
    by_path = InceptionV3(InceptionV3Config(weights=str(path)))
    assert by_path.weights.kind == "file" and not by_path.weights.is_random
    np.testing.assert_allclose(by_path.compute([_frames()])[0], reference, atol=1e-5)

    cached = offline / "torch" / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    named = InceptionV3(InceptionV3Config(weights="imagenet"))
    assert named.weights.paths["model"] == cached and named.weights.kind == "pretrained"
    np.testing.assert_allclose(named.compute([_frames()])[0], reference, atol=1e-5)
    assert named.weights_digest() == by_path.weights_digest()  # same bytes, same key


def test_random_and_bad_specs(offline):
    a = resolve_weights("random:0", "vgg16", {})
    assert a.is_random and a.digest != resolve_weights("random:1", "vgg16", {}).digest
    with pytest.raises(WeightsError, match="random:SEED with an integer seed"):
        resolve_weights("random:x", "vgg16", {})
    with pytest.raises(WeightsError, match="does not exist, and it is not a known name"):
        resolve_weights("/nope/w.pth", "vgg16", {"imagenet": None})
    bad = offline / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load"):
        W.load_state_dict(bad, "test")


def test_weights_file_hash_prefix():
    f = W.WeightsFile("https://x/vggish-10086976.pth")
    assert f.filename == "vggish-10086976.pth" and f.hash_prefix == "10086976"
    assert W.WeightsFile("https://x/model.pth").hash_prefix is None


def test_numpy1_era_pickles_load(tmp_path):
    """The published VGGish PCA file holds numpy arrays pickled as numpy.core.multiarray."""
    import zipfile

    from extractors.vggish import load_pca

    src, old = tmp_path / "new.pth", tmp_path / "vggish_pca_old.pth"
    torch.save({"pca_eigen_vectors": np.eye(128), "pca_means": np.arange(128.0)}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(old, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)
    eig, means = load_pca(str(old))
    assert np.array_equal(eig, np.eye(128)) and means[5] == 5.0


def test_pca_content_is_in_the_key(tmp_path):
    from extractors.vggish import VGGish, VGGishConfig

    pca = tmp_path / "pca.npz"
    np.savez(pca, pca_eigen_vectors=np.eye(128), pca_means=np.zeros(128))
    cfg = VGGishConfig(weights="random:0", postprocess=True, pca=str(pca))
    before = VGGish(cfg).weights_digest()
    np.savez(pca, pca_eigen_vectors=2 * np.eye(128), pca_means=np.zeros(128))
    import os

    os.utime(pca, ns=(1, 2 * 10**18))
    assert VGGish(cfg).weights_digest() != before
    assert VGGish(VGGishConfig(weights="random:0")).weights_digest() != before


def test_wrong_architecture_file_is_a_clear_error(offline):
    from extractors.vgg16 import VGG16, VGG16Config

    path = offline / "not_vgg.pth"
    torch.save({"layer.weight": torch.zeros(2, 2)}, path)
    ex = VGG16(VGG16Config(weights=str(path)))
    with pytest.raises(WeightsError, match="does not fit this network"):
        ex.build(ex.weights)
    with pytest.raises(WeightsError, match="is a directory"):
        resolve_weights(str(offline), "vgg16", {})


def test_status_never_downloads_and_cli_error_is_clean(offline, monkeypatch, tmp_path, tiny_synthetic_root):
    from pipeline.config import load_config
    from pipeline.runner import status

    from ..conftest import TINY, cli, write_config

    calls = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: calls.append(a))
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY}},
                       {"vgg16": {"group": "extract", "implementation": "vgg16"}})
    rows = status(load_config(cfg), None)
    assert not calls and rows[0]["state"].startswith("cannot resolve") and "vgg16-397923af.pth" in rows[0]["state"]
    proc = cli("run", "extract", "--config", str(cfg), check=False,
               env={**__import__("os").environ, "TORCH_HOME": str(offline / "torch")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "vgg16-397923af.pth" in proc.stderr and str(offline / "torch" / "hub" / "checkpoints") in proc.stderr


def test_a_datasets_weights_directory_is_searched_first(offline, inception_file, tmp_path):
    """`weights: DIR` under a dataset: every named weights file of its stages is looked for in DIR first (the
    param stays `imagenet`; the file's digest is in the key, so the same bytes give the same key anywhere)."""
    from pipeline.config import ExecutionParams, load_config
    from tests.conftest import write_config

    path, reference = inception_file
    (tmp_path / "lab-weights").mkdir()
    (tmp_path / "lab-weights" / "inception_v3_google-0cc3c7bd.pth").symlink_to(path)
    stages = {"inception_v3": {"group": "extract", "implementation": "inception_v3", "params": {"weights": "imagenet"}}}
    cfg = load_config(write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                                   {"lab": {"adapter": "folder", "root": "data", "weights": "./lab-weights"},
                                    "other": {"adapter": "folder", "root": "data"}}, stages))
    assert cfg.params_for("inception_v3", "lab")["weights"] == "imagenet"
    execution = cfg.execution_for("inception_v3", "lab")
    assert execution.weights_dir == str(tmp_path / "lab-weights")
    assert cfg.execution_for("inception_v3", "other").weights_dir is None
    ex = InceptionV3(InceptionV3Config(weights="imagenet"), execution)
    assert ex.weights.paths["model"] == tmp_path / "lab-weights" / "inception_v3_google-0cc3c7bd.pth"
    np.testing.assert_allclose(ex.compute([_frames()])[0], reference, atol=1e-5)
    assert ex.weights_digest() == InceptionV3(InceptionV3Config(weights=str(path))).weights_digest()
    with pytest.raises(WeightsError, match="inception_v3_google-0cc3c7bd.pth is not in"):  # elsewhere: not found
        _ = InceptionV3(InceptionV3Config(weights="imagenet"), ExecutionParams()).weights
