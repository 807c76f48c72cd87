"""`vggish`: the AudioSet VGGish embedding (128 per 0.96 s example) over the `vggish` log-mel examples.

Network: conv 64 / 128 / 256x2 / 512x2 (3x3, ReLU), 2x2 max pooling after each block, then fully
connected 12288 -> 4096 -> 4096 -> 128 with the embedding taken before any final activation.
Postprocessing, optional, as the reference: PCA with the published eigenvectors and means, clip to
[-2, 2], quantize to uint8 by round((x + 2) * 255 / 4).

Backends: `torch` (default; GPU when there is one) with weights `audioset` (the published torch port,
harritaylor/torchvggish v0.1), a local state dict (e.g. from `pipeline convert-vggish`) or
`random:SEED`; and `tfhub`, which runs `tensorflow_hub.load(hub_handle)` (a URL or a local SavedModel
directory) on the 16 kHz waveform, as the TF-Hub VGGish model takes it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from pipeline.cache import hash_key
from pipeline.registry import register_extractor

from . import _dsp, _torch, vggish_input
from .base import Extractor, OutputSpec, split_rows
from .weights import (
    PretrainedWeights,
    ResolvedWeights,
    WeightsError,
    WeightsFile,
    announce_random,
    load_into,
    load_state_dict,
    resolve_weights,
)

QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
AUDIOSET = PretrainedWeights(
    "audioset",
    {"model": WeightsFile("https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"),
     "pca": WeightsFile("https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
                        "vggish_pca_params-970ea276.pth")},
    {"embedding_size": 128, "sample_rate": 16000, "example_seconds": 0.96, "source": "AudioSet VGGish (TF) port"})
TFHUB_VGGISH = "https://tfhub.dev/google/vggish/1"


@dataclass
class VGGishConfig:
    weights: str = "audioset"
    backend: Literal["torch", "tfhub"] = "torch"
    postprocess: bool = False
    pca: str = "audioset"
    hub_handle: str = TFHUB_VGGISH
    pad_short: bool = False  # zero-pad a clip shorter than one 0.96 s example instead of failing it
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (torch backend; CPUs with AVX512-BF16/AMX, CUDA)

    KEY_NEUTRAL: ClassVar[dict[str, Any]] = {"pad_short": False, "precision": "fp32"}


def build_vggish() -> Any:
    """The VGGish network as a torch module; parameter names match the published torch port."""
    import torch
    from torch import nn

    class VGGish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = 1
            for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]:
                if v == "M":
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                else:
                    layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                    channels = int(v)
            self.features = nn.Sequential(*layers)
            self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
                                            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 128))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x.reshape(-1, 1, 96, 64))
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flatten in TF's NHWC order
            return self.embeddings(x)

    return VGGish()


def postprocess(embeddings: np.ndarray, eigen_vectors: np.ndarray, means: np.ndarray) -> np.ndarray:
    """PCA (x - mean) @ E.T, clip to [-2, 2], quantize to uint8 by round((x + 2) * 255 / 4)."""
    pca = (np.asarray(embeddings, np.float64) - np.asarray(means, np.float64).reshape(1, -1)) @ np.asarray(
        eigen_vectors, np.float64).T
    clipped = np.clip(pca, QUANTIZE_MIN, QUANTIZE_MAX)
    return np.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))).astype(np.uint8)


def resolve_pca(spec: str, download: bool = True) -> ResolvedWeights:
    """Where the PCA params are: `audioset` (published file: cache dir, then download) or a local file."""
    if spec == "audioset":
        return resolve_weights("audioset", "vggish pca", {"audioset": PretrainedWeights(
            "audioset", {"model": AUDIOSET.files["pca"]})}, download=download, param="pca")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"vggish pca '{spec}': no such file; set `pca:` to a .npz or .pth holding "
                           "pca_eigen_vectors and pca_means, or to `audioset`")
    return resolve_weights(str(path), "vggish pca", {}, param="pca")


def load_pca(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """PCA params from `audioset` (published file), a .npz (`pca_eigen_vectors`, `pca_means`) or a state dict."""
    path = resolve_pca(spec).paths["model"]
    if path.suffix == ".npz":
        with np.load(path) as z:
            params = {k: z[k] for k in z.files}
    else:
        params = {k: np.asarray(v) for k, v in load_state_dict(path, f"vggish pca '{spec}'").items()}
    try:
        return np.asarray(params["pca_eigen_vectors"]), np.asarray(params["pca_means"]).reshape(-1)
    except KeyError:
        raise WeightsError(f"vggish pca '{spec}': {path} has no pca_eigen_vectors / pca_means") from None


@register_extractor
class VGGish(Extractor):
    """128-d VGGish embeddings per 0.96 s of audio, from the upstream waveform store."""

    name = "vggish"
    VERSION = 1
    Config = VGGishConfig
    consumes = "waveform"
    produces = "audio_embedding"
    modality = "audio"

    @functools.cached_property
    def weights(self) -> ResolvedWeights:
        if self.config.backend == "tfhub":
            handle = Path(self.config.hub_handle).expanduser()
            if handle.is_dir():  # a local SavedModel: its content is part of the key
                from .weights import path_digest

                return ResolvedWeights(self.config.hub_handle, "file", hash_key(["tfhub", path_digest(handle)]),
                                       {"model": handle})
            if "://" not in self.config.hub_handle:
                raise WeightsError(f"vggish hub_handle '{self.config.hub_handle}': not a URL and no SavedModel "
                                   "directory there; pass a TF-Hub URL or a local SavedModel directory")
            return ResolvedWeights(self.config.hub_handle, "pretrained", self.config.hub_handle)
        return resolve_weights(self.config.weights, "vggish", {"audioset": AUDIOSET}, download=self.allow_download,
                               dirs=self.weights_dirs)

    def weights_digest(self) -> str | None:
        """The network's digest, plus the PCA file's content when postprocessing uses it."""
        if not self.config.postprocess:
            return self.weights.digest
        return hash_key([self.weights.digest, resolve_pca(self.config.pca, download=self.allow_download).digest])

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        return OutputSpec("audio_embedding", (128,), "uint8" if self.config.postprocess else "float32",
                          1 / vggish_input.EXAMPLE_SECONDS,
                          {"vggish_backend": self.config.backend, "postprocess": self.config.postprocess,
                           "weights": self.config.weights if self.config.backend == "torch" else self.config.hub_handle,
                           "random_weights": self.weights.is_random, "example_seconds": vggish_input.EXAMPLE_SECONDS,
                           "precision": self.config.precision})

    @functools.cached_property
    def _pca(self) -> tuple[np.ndarray, np.ndarray] | None:
        return load_pca(self.config.pca) if self.config.postprocess else None

    @functools.cached_property
    def _torch_model(self) -> tuple[Any, Any]:
        import torch

        announce_random("vggish", self.weights)
        device = _torch.pick_device(self.execution.device if self.execution else "auto")
        if self.weights.is_random:
            torch.manual_seed(self.weights.seed)
        model = build_vggish()
        if not self.weights.is_random:
            what = f"vggish weights '{self.weights.spec}'"
            state = load_state_dict(self.weights.paths["model"], what)
            load_into(model, {k: v for k, v in state.items() if not k.startswith("pca_")}, what)
        return _torch.prepare_model(model, device, image=True), device

    @functools.cached_property
    def _hub_model(self) -> Any:
        try:
            import tensorflow_hub as hub
        except ImportError:
            raise WeightsError("vggish backend 'tfhub' needs the tfhub extra: pip install -e .[tfhub]") from None
        return hub.load(self.config.hub_handle)

    def embed(self, waves: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        """Raw (not postprocessed) 128-d embeddings per waveform."""
        waves16 = [_dsp.resample(np.asarray(w, np.float64), sample_rate, vggish_input.SAMPLE_RATE) for w in waves]
        if self.config.pad_short:
            waves16 = [vggish_input.pad_to_example(w) for w in waves16]
        if self.config.backend == "tfhub":
            import tensorflow as tf

            return [np.asarray(self._hub_model(tf.constant(w, tf.float32)), np.float32).reshape(-1, 128)
                    for w in waves16]
        examples = [vggish_input.examples_from_log_mel(vggish_input.log_mel(w)) for w in waves16]
        model, device = self._torch_model
        batch = self.execution.batch_size if self.execution else 32
        flat = np.concatenate(examples, axis=0) if examples else np.zeros((0, 96, 64), np.float32)
        # [B, 1, 96, 64]: rank 4, as channels_last needs on CUDA
        out = _torch.run_batched(model, flat[:, None], batch, device, image=True,
                                 precision=self.config.precision).reshape(-1, 128)
        return split_rows(out, [e.shape[0] for e in examples])

    def min_seconds(self) -> float | None:
        return vggish_input.MIN_SAMPLES / vggish_input.SAMPLE_RATE

    def compute(self, inputs: Sequence[np.ndarray], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        sr = int((upstream or {}).get("sample_rate", vggish_input.SAMPLE_RATE))
        raw = self.embed(inputs, sr)
        if self._pca is None:
            return [r.astype(np.float32) for r in raw]
        return [postprocess(r, *self._pca) for r in raw]
