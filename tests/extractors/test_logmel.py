"""The log-mel presets against independent references: AudioSet's VGGish input code and librosa."""
import numpy as np
import pytest

from extractors import logmel, vggish_input
from extractors.base import Extractor
from pipeline.registry import EXTRACTORS


@pytest.fixture(scope="module")
def speechlike():
    rng = np.random.default_rng(0)
    t = np.arange(int(2.3 * 16000)) / 16000
    wave = 0.4 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.normal(size=t.size)
    return np.clip(wave, -1, 1)


def test_vggish_examples_match_reference_at_16k(speechlike):
    ref = pytest.importorskip("torchvggish.vggish_input")
    ours = vggish_input.waveform_to_examples(speechlike, 16000)
    theirs = ref.waveform_to_examples(speechlike, 16000, return_tensor=False)
    assert ours.shape == theirs.shape == (2, 96, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_vggish_resampling_and_channels_match_reference(speechlike):
    ref = pytest.importorskip("torchvggish.vggish_input")
    import resampy

    stereo44 = np.stack([resampy.resample(speechlike, 16000, 44100)] * 2, axis=1) * [1.0, 0.5]
    ours = vggish_input.waveform_to_examples(stereo44, 44100)
    theirs = ref.waveform_to_examples(stereo44, 44100, return_tensor=False)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_vggish_input_contract():
    assert vggish_input.waveform_to_examples(np.zeros(15000), 16000).shape == (0, 96, 64)  # < 0.975 s
    assert vggish_input.waveform_to_examples(np.zeros(15600), 16000).shape == (1, 96, 64)
    with pytest.raises(TypeError, match="32768"):
        vggish_input.waveform_to_examples(np.zeros(16000, dtype=np.int16), 16000)


def test_davenet_matches_librosa(speechlike):
    librosa = pytest.importorskip("librosa")
    import scipy.signal

    y = speechlike - speechlike.mean()
    y = np.append(y[0], y[1:] - 0.97 * y[:-1])
    spec = np.abs(librosa.stft(y, n_fft=400, hop_length=160, win_length=400, center=True, pad_mode="reflect",
                               window=scipy.signal.windows.hamming(400, sym=True), dtype=np.complex128)) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40, fmin=20, dtype=np.float64) @ spec
    ref = librosa.power_to_db(mel, ref=np.max)
    ours = logmel.davenet_logmel(speechlike)
    n = ref.shape[1]
    assert ours.shape == (2048, 40)
    np.testing.assert_allclose(ours[:n], ref.T, atol=1e-3)
    assert not ours[n:].any()  # padded with 0 up to 2048 frames
    long = logmel.davenet_logmel(np.tile(speechlike, 10))
    assert long.shape == (2048, 40) and long.min() >= -80.0 - 1e-6


def test_vgs_matches_librosa(speechlike):
    librosa = pytest.importorskip("librosa")
    wave = speechlike.copy()
    wave[:8000] = 0.0  # silence makes exact zeros appear in the mel power
    mel = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=400, hop_length=160, n_mels=40, power=2.0,
                                         center=True, pad_mode="reflect", dtype=np.complex128)
    mel[mel == 0] = mel[mel != 0].min()
    ref = (10 * np.log10(mel)).T
    ours = logmel.vgs_logmel(wave)
    assert ours.shape == ref.shape == (1 + wave.size // 160, 40)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


@pytest.mark.parametrize("name", EXTRACTORS.names())
def test_every_extractor_declares_its_output(name):
    import dataclasses

    cls = EXTRACTORS.get(name)
    assert issubclass(cls, Extractor) and cls.VERSION >= 1 and cls.produces
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    ex = cls(cls.Config(**({"weights": "random:0"} if "weights" in fields else {})))
    spec = ex.output_spec({"sample_rate": 48000 if name == "clap" else 16000})  # CLAP takes its checkpoint's rate
    assert ex.modality in ("audio", "visual", "text")  # which side of a tnn-h5 export it lands on; text: none
    if cls.reads == "features":  # imported arrays: dims and dtype are the source's
        assert spec.dims is None and spec.dtype is None
        return
    if cls.reads == "text":  # a sentence: one row, no time axis
        assert spec.frame_rate is None and ex.modality == "text"
    else:
        assert spec.frame_rate and spec.frame_rate > 0
    assert spec.dtype
    assert all(d > 0 for d in spec.dims)
    if "weights" in fields:  # random weights are stated in the store metadata
        assert spec.extra["random_weights"] is True and ex.weights_digest()


@pytest.mark.parametrize("preset", ["vggish", "davenet", "vgs"])
def test_logmel_extractor_output_matches_its_spec(preset, speechlike):
    ex = logmel.LogMel(logmel.LogMelConfig(preset=preset))
    spec = ex.output_spec({"sample_rate": 16000})
    (out,) = ex.compute([speechlike.astype(np.float32)], {"sample_rate": 16000})
    assert out.shape[1:] == spec.dims and str(out.dtype) == spec.dtype
    (resampled,) = ex.compute([speechlike[::2].astype(np.float32)], {"sample_rate": 8000})
    assert resampled.shape[1:] == spec.dims  # an 8 kHz upstream is resampled to 16 kHz first
