"""VGGish: the torch port equals a TF VGGish (random weights, saved as a SavedModel) through the
tfhub backend, with and without postprocessing; the postprocessing equals the reference formula."""
import numpy as np
import pytest

from extractors import vggish_input
from extractors.vggish import VGGish, VGGishConfig, build_vggish, postprocess
from extractors.vggish_convert import convert

_CONVS = [("conv1", 1, 64), ("conv2", 64, 128), ("conv3/conv3_1", 128, 256), ("conv3/conv3_2", 256, 256),
          ("conv4/conv4_1", 256, 512), ("conv4/conv4_2", 512, 512)]
_FCS = [("fc1/fc1_1", 12288, 4096), ("fc1/fc1_2", 4096, 4096), ("fc2", 4096, 128)]


def _build_tf_vggish(path, seed=0):
    """A VGGish-shaped TF model taking a 16 kHz waveform, like the TF-Hub VGGish, saved to `path`."""
    import tensorflow as tf

    from extractors import _dsp

    rng = np.random.default_rng(seed)

    class TFVGGish(tf.Module):
        def __init__(self):
            super().__init__()
            self.params = {}
            for name, cin, cout in _CONVS:
                self.params[name] = (
                    tf.Variable(rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout)).astype("float32"),
                                name=f"vggish/{name}/weights"),
                    tf.Variable(rng.normal(0, 0.01, cout).astype("float32"), name=f"vggish/{name}/biases"))
            for name, fin, fout in _FCS:
                self.params[name] = (
                    tf.Variable(rng.normal(0, np.sqrt(2 / fin), (fin, fout)).astype("float32"),
                                name=f"vggish/{name}/weights"),
                    tf.Variable(rng.normal(0, 0.01, fout).astype("float32"), name=f"vggish/{name}/biases"))
            self.mel = tf.constant(_dsp.vggish_mel_matrix(64, 257, 16000, 125.0, 7500.0))
            self.window = tf.constant(_dsp.periodic_hann(400))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, waveform):
            frames = tf.signal.frame(tf.cast(waveform, tf.float64), 400, 160)
            spec = tf.abs(tf.signal.rfft(frames * self.window, [512]))
            log_mel = tf.math.log(tf.matmul(spec, self.mel) + 0.01)
            x = tf.reshape(tf.cast(tf.signal.frame(log_mel, 96, 96, axis=0), tf.float32), [-1, 96, 64, 1])
            for name, _, _ in _CONVS:
                w, b = self.params[name]
                x = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME") + b)
                if name in ("conv1", "conv2", "conv3/conv3_2", "conv4/conv4_2"):
                    x = tf.nn.max_pool2d(x, 2, 2, "SAME")
            x = tf.reshape(x, [tf.shape(x)[0], -1])
            for name, _, _ in _FCS:
                w, b = self.params[name]
                x = tf.matmul(x, w) + b
                x = x if name == "fc2" else tf.nn.relu(x)
            return x

    module = TFVGGish()
    tf.saved_model.save(module, str(path))
    return path


@pytest.fixture(scope="module")
def tf_vggish(tmp_path_factory):
    root = tmp_path_factory.mktemp("vggish")
    saved = _build_tf_vggish(root / "saved_model")
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(128, 128)))
    np.savez(root / "pca.npz", pca_eigen_vectors=q, pca_means=rng.normal(0, 0.1, 128))
    converted = convert(saved, root / "vggish_converted.pth", pca=root / "pca.npz")
    return saved, root / "pca.npz", converted


@pytest.fixture(scope="module")
def audio():
    t = np.arange(int(3.1 * 16000)) / 16000
    rng = np.random.default_rng(2)
    return (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.normal(size=t.size))


@pytest.mark.parametrize("post", [False, True])
def test_tfhub_backend_equals_converted_torch_backend(tf_vggish, audio, post):
    saved, pca, converted = tf_vggish
    tfhub = VGGish(VGGishConfig(backend="tfhub", hub_handle=str(saved), postprocess=post, pca=str(pca)))
    torch_ = VGGish(VGGishConfig(weights=str(converted), postprocess=post, pca=str(pca)))
    (a,), (b,) = tfhub.compute([audio], {"sample_rate": 16000}), torch_.compute([audio], {"sample_rate": 16000})
    assert a.shape == b.shape == (3, 128)
    assert a.dtype == b.dtype == (np.uint8 if post else np.float32)
    assert np.abs(a.astype(np.float64) - b.astype(np.float64)).max() < 1e-4
    if not post:
        assert a.std() > 0.1  # a live network, not a constant


def test_postprocess_matches_reference_formula():
    rng = np.random.default_rng(3)
    x, e, m = rng.normal(0, 2, (5, 128)), np.linalg.qr(rng.normal(size=(128, 128)))[0], rng.normal(0, 0.5, 128)
    ref = np.dot(e, (x.T - m.reshape(-1, 1))).T
    ref = np.round((np.clip(ref, -2, 2) + 2) * 255 / 4)
    out = postprocess(x, e, m)
    assert out.dtype == np.uint8 and np.array_equal(out, ref.astype(np.uint8))
    assert out.min() == 0 and out.max() == 255  # clipping happened on both sides


def test_network_shape_and_no_final_relu():
    import torch

    torch.manual_seed(0)
    net = build_vggish().eval()
    with torch.inference_mode():
        y = net(torch.from_numpy(vggish_input.waveform_to_examples(np.random.default_rng(0).normal(0, .1, 32000), 16000)))
    assert y.shape == (2, 128) and (y < 0).any()
    assert sum(p.numel() for p in net.parameters()) == 72141184  # the published VGGish size
