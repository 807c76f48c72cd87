"""`logmel`: log-mel spectrograms with presets that reproduce the seeds' front ends.

- `vggish` (AudioSet VGGish): [N, 96, 64] examples of 0.96 s; see `extractors.vggish_input`.
- `davenet` (DAVEnet / VASE): DC removal, pre-emphasis 0.97, 25 ms symmetric Hamming window,
  10 ms hop, n_fft 400, power spectrum, 40 Slaney mel bands from 20 Hz, power_to_db(ref=max,
  top_db=80), right-padded with 0 or truncated to 2048 frames: [2048, 40] per clip.
- `vgs` (VGS alignment): 25 ms periodic Hann, 10 ms hop, n_fft 400, 40 Slaney mel bands,
  power 2, zeros replaced by the clip's smallest nonzero value, 10*log10: [T, 40].
- `spectrogram` (See, Hear, and Read's sound input, 500 x 257 for 5 s): 32 ms periodic Hann, 10 ms hop,
  n_fft 512, log(magnitude + 1e-6), minus the clip's mean: [T, 257] (not mel: every linear bin).

Rows are time in every preset (the DAVEnet code keeps [40, 2048]; transpose to feed it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from pipeline.registry import register_extractor

from . import _dsp, vggish_input
from .base import Extractor, OutputSpec

SAMPLE_RATE = 16000
_DAVENET_FRAMES = 2048


@dataclass
class LogMelConfig:
    preset: Literal["vggish", "davenet", "vgs", "spectrogram"] = "vggish"
    pad_short: bool = False  # vggish preset: zero-pad a clip shorter than one example instead of failing it

    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {"pad_short": False}


def davenet_logmel(wave: np.ndarray) -> np.ndarray:
    """DAVEnet's front end on a 16 kHz waveform: [2048, 40] dB (0 = clip maximum, floor -80)."""
    y = np.asarray(wave, dtype=np.float64)
    if y.size == 0:
        y = np.zeros(200)
    y = y - y.mean()
    y = np.append(y[0], y[1:] - 0.97 * y[:-1])
    frames = _dsp.centered_frames(y, 400, 160)
    power = np.abs(np.fft.rfft(frames * _dsp.symmetric_hamming(400), 400)) ** 2
    mel = power @ _dsp.slaney_mel_matrix(40, 400, SAMPLE_RATE, 20.0, None)
    amin = 1e-10
    db = 10.0 * np.log10(np.maximum(amin, mel)) - 10.0 * np.log10(max(amin, float(mel.max())))
    db = np.maximum(db, db.max() - 80.0)
    out = np.zeros((_DAVENET_FRAMES, 40), dtype=np.float32)
    n = min(_DAVENET_FRAMES, db.shape[0])
    out[:n] = db[:n]
    return out


def vgs_logmel(wave: np.ndarray) -> np.ndarray:
    """The VGS alignment front end on a 16 kHz waveform: [T, 40] of 10*log10 mel power."""
    y = np.asarray(wave, dtype=np.float64)
    frames = _dsp.centered_frames(y, 400, 160)
    power = np.abs(np.fft.rfft(frames * _dsp.periodic_hann(400), 400)) ** 2
    mel = power @ _dsp.slaney_mel_matrix(40, 400, SAMPLE_RATE, 0.0, None)
    zero = mel == 0
    if zero.any():
        nonzero = mel[~zero]
        mel[zero] = np.abs(nonzero).min() if nonzero.size else 1e-12
    return (10.0 * np.log10(mel)).astype(np.float32)


def log_spectrogram(wave: np.ndarray) -> np.ndarray:
    """See, Hear, and Read's sound input on a 16 kHz waveform: [T, 257] log magnitudes, the clip's mean subtracted."""
    y = np.asarray(wave, dtype=np.float64)
    if y.size == 0:
        y = np.zeros(512)
    frames = _dsp.centered_frames(y, 512, 160)
    logmag = np.log(np.abs(np.fft.rfft(frames * _dsp.periodic_hann(512), 512)) + 1e-6)
    return (logmag - logmag.mean()).astype(np.float32)


_PRESETS = {
    "vggish": (lambda w: vggish_input.examples_from_log_mel(vggish_input.log_mel(w)),
               (96, 64), 1 / vggish_input.EXAMPLE_SECONDS),
    "davenet": (davenet_logmel, (40,), 100.0),
    "vgs": (vgs_logmel, (40,), 100.0),
    "spectrogram": (log_spectrogram, (257,), 100.0),
}


@register_extractor
class LogMel(Extractor):
    """Log-mel features from the upstream waveform store; resamples to 16 kHz if needed."""

    name = "logmel"
    VERSION = 1
    Config = LogMelConfig
    consumes = "waveform"
    produces = "logmel"
    modality = "audio"

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        _, dims, rate = _PRESETS[self.config.preset]
        return OutputSpec("logmel", dims, "float32", rate, {"preset": self.config.preset, "sample_rate": SAMPLE_RATE})

    def min_seconds(self) -> float | None:
        return vggish_input.MIN_SAMPLES / SAMPLE_RATE if self.config.preset == "vggish" else None

    def compute(self, inputs: Sequence[np.ndarray], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        fn = _PRESETS[self.config.preset][0]
        sr = int((upstream or {}).get("sample_rate", SAMPLE_RATE))
        pad = vggish_input.pad_to_example if self.config.pad_short and self.config.preset == "vggish" else None
        out = []
        for w in inputs:
            w16 = _dsp.resample(np.asarray(w, dtype=np.float64), sr, SAMPLE_RATE)
            out.append(fn(pad(w16) if pad else w16).astype(np.float32))
        return out
