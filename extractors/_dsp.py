"""Shared signal processing for the log-mel front ends (float64 numpy, like the references)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def resample(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling with resampy's kaiser_best filter, as the VGGish reference does."""
    if sr_in == sr_out:
        return wave
    import resampy

    return resampy.resample(np.ascontiguousarray(wave, dtype=np.float64), sr_in, sr_out, filter="kaiser_best")


def frame(data: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Non-padded frames along axis 0: `1 + floor((n - window) / hop)` of them (none if n < window)."""
    n = data.shape[0]
    count = 1 + (n - window) // hop if n >= window else 0
    if count == 0:
        return np.zeros((0, window, *data.shape[1:]), dtype=data.dtype)
    view = np.lib.stride_tricks.sliding_window_view(data, window, axis=0)[::hop][:count]
    return np.moveaxis(view, -1, 1) if data.ndim > 1 else view


def periodic_hann(n: int) -> np.ndarray:
    """Periodic Hann window (the 'fftbins' form)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi / n * np.arange(n))


def symmetric_hamming(n: int) -> np.ndarray:
    """Symmetric Hamming window (scipy.signal.windows.hamming(n, sym=True))."""
    return 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / (n - 1))


def _hz_to_htk_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def vggish_mel_matrix(n_mels: int, n_bins: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """[n_bins, n_mels] triangles linear in HTK mel (not in Hz), DC row zeroed, as in AudioSet's mel_features."""
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= Nyquist, got {fmin}, {fmax}, sr={sample_rate}")
    bins_mel = _hz_to_htk_mel(np.linspace(0.0, sample_rate / 2, n_bins))
    edges = np.linspace(_hz_to_htk_mel(fmin), _hz_to_htk_mel(fmax), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (bins_mel[:, None] - lower) / (center - lower)
    down = (upper - bins_mel[:, None]) / (upper - center)
    m = np.maximum(0.0, np.minimum(up, down))
    m[0, :] = 0.0
    return m


@lru_cache(maxsize=8)
def slaney_mel_matrix(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float | None) -> np.ndarray:
    """[n_fft//2+1, n_mels] Slaney-scale, area-normalised filters (librosa.filters.mel defaults)."""
    import torchaudio.functional as AF

    fb = AF.melscale_fbanks(n_freqs=n_fft // 2 + 1, f_min=float(fmin), f_max=float(fmax or sample_rate / 2),
                            n_mels=n_mels, sample_rate=sample_rate, norm="slaney", mel_scale="slaney")
    return fb.double().numpy()


def centered_frames(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """librosa's center=True framing with reflect padding (its default before 0.10)."""
    pad = n_fft // 2
    padded = np.pad(wave, pad, mode="reflect") if wave.size > 1 else np.pad(wave, pad, mode="constant")
    return frame(padded, n_fft, hop)
