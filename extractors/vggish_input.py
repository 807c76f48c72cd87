"""The AudioSet VGGish input pipeline: waveform -> [N, 96, 64] log-mel examples.

Same contract and numbers as the reference `vggish_input.waveform_to_examples`: 16 kHz,
25 ms periodic Hann window, 10 ms hop, 512-point FFT magnitude, 64 HTK-mel bands 125-7500 Hz,
log(mel + 0.01), non-overlapping 0.96 s examples; other rates are resampled with resampy's
kaiser_best filter, like the reference.
"""
from __future__ import annotations

import numpy as np

from . import _dsp

SAMPLE_RATE = 16000
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
NUM_BANDS = 64
NUM_FRAMES = 96
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_SECONDS = 0.96
# the shortest waveform that gives one example: 96 frames of a 25 ms window every 10 ms
MIN_SAMPLES = int(round(SAMPLE_RATE * WINDOW_SECONDS)) + (NUM_FRAMES - 1) * int(round(SAMPLE_RATE * HOP_SECONDS))


def log_mel(wave16k: np.ndarray) -> np.ndarray:
    """[T, 64] log-mel frames of a mono 16 kHz waveform."""
    win = int(round(SAMPLE_RATE * WINDOW_SECONDS))
    hop = int(round(SAMPLE_RATE * HOP_SECONDS))
    n_fft = 2 ** int(np.ceil(np.log2(win)))
    frames = _dsp.frame(np.asarray(wave16k, dtype=np.float64), win, hop)
    spec = np.abs(np.fft.rfft(frames * _dsp.periodic_hann(win), n_fft))
    mel = spec @ _dsp.vggish_mel_matrix(NUM_BANDS, n_fft // 2 + 1, SAMPLE_RATE, MEL_MIN_HZ, MEL_MAX_HZ)
    return np.log(mel + LOG_OFFSET)


def pad_to_example(wave16k: np.ndarray) -> np.ndarray:
    """A waveform shorter than one example, zero-padded at the end to exactly one (others unchanged)."""
    wave16k = np.asarray(wave16k)
    if wave16k.shape[0] >= MIN_SAMPLES:
        return wave16k
    return np.pad(wave16k, [(0, MIN_SAMPLES - wave16k.shape[0])] + [(0, 0)] * (wave16k.ndim - 1))


def examples_from_log_mel(log_mel_frames: np.ndarray) -> np.ndarray:
    """Cut [T, 64] frames into non-overlapping [N, 96, 64] examples; a trailing partial one is dropped."""
    n = int(round(EXAMPLE_SECONDS / HOP_SECONDS))
    return _dsp.frame(log_mel_frames, n, n).astype(np.float32)


def waveform_to_examples(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Float waveform in [-1, 1] (mono `[n]` or multi-channel `[n, channels]`, any rate) -> [N, 96, 64] float32."""
    data = np.asarray(waveform)
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(f"waveform must be floating point in [-1, 1], got {data.dtype}; "
                        "for int16 samples pass waveform / 32768.0")
    if data.ndim == 2:
        data = data.mean(axis=1)
    elif data.ndim != 1:
        raise ValueError(f"waveform must be [samples] or [samples, channels], got shape {data.shape}")
    data = _dsp.resample(data.astype(np.float64), int(sample_rate), SAMPLE_RATE)
    return examples_from_log_mel(log_mel(data))
