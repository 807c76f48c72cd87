"""`clap` and `clap_text`: LAION-CLAP's audio and text towers (Wu et al. 2023) through transformers' `ClapModel`
(HTSAT audio encoder, RoBERTa text encoder), each giving the projected features of the shared audio-text space
(`get_audio_features` / `get_text_features`).

`clap` reads the `audio` stage's waveform, which must be at the checkpoint's rate (48 kHz for LAION's), cuts it
into windows of `window_s` seconds (default: the checkpoint's own input length, 10 s) and embeds each: one row
per window, so a long clip is covered rather than randomly cropped. Each window goes through the checkpoint's own
feature extractor (its mel filterbank; a window shorter than the input length is repeat-padded, as CLAP pads).
The last, partial window of a clip longer than one window is kept when it is at least half a window.
`clap_text` embeds each item's caption or transcript (docs/extractors.md)."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.config import ConfigError
from pipeline.registry import register_extractor

from .base import OutputSpec, split_rows
from .hf import DEFAULTS, EncoderConfig, TextTower, TransformersEncoder, byte_vocab
from .weights import WeightsError

TINY = {"text_width": 32, "text_layers": 2, "heads": 2, "patch_width": 16, "projection_dim": 64, "max_positions": 80}
LAION_RATE, LAION_SECONDS = 48000, 10  # ClapFeatureExtractor's defaults, LAION's checkpoints' own
ROBERTA_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]
TEXT_TOKENS = 77  # LAION-CLAP's tokenizer call: max_length=77, truncation


@dataclass
class ClapAudioConfig(EncoderConfig):
    """Identity params of `clap`: the checkpoint, the window length (None: the checkpoint's input length), precision."""

    weights: str = DEFAULTS["clap"]
    window_s: float | None = None

    def __post_init__(self) -> None:
        if self.window_s is not None and self.window_s <= 0:
            raise ValueError(f"window_s must be > 0 (or null: the checkpoint's input length), got {self.window_s}")


@dataclass
class ClapTextConfig(EncoderConfig):
    """Identity params of `clap_text`: the checkpoint and the precision."""

    weights: str = DEFAULTS["clap"]


class _Clap:
    """What both CLAP towers share: the family, and the small random model of `random:SEED`."""

    arch = "clap"
    model_class = "ClapModel"

    def tiny_config(self) -> Any:
        from transformers import ClapConfig

        t = TINY
        return ClapConfig(
            text_config=dict(vocab_size=len(byte_vocab(ROBERTA_SPECIAL)) + 1, hidden_size=t["text_width"],
                             intermediate_size=2 * t["text_width"], num_hidden_layers=t["text_layers"],
                             num_attention_heads=t["heads"], max_position_embeddings=t["max_positions"],
                             projection_dim=t["projection_dim"], bos_token_id=0, pad_token_id=1, eos_token_id=2),
            audio_config=dict(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                              patch_embeds_hidden_size=t["patch_width"], hidden_size=t["patch_width"] * 8,
                              projection_dim=t["projection_dim"]),
            projection_dim=t["projection_dim"])

    def tiny_processor(self) -> Any:
        from transformers import ClapFeatureExtractor, ClapProcessor, RobertaTokenizer

        vocab = byte_vocab(ROBERTA_SPECIAL)
        vocab["<mask>"] = len(vocab)
        return ClapProcessor(ClapFeatureExtractor(truncation="rand_trunc"), RobertaTokenizer(vocab=vocab, merges=[]))


@register_extractor
class ClapAudio(_Clap, TransformersEncoder):
    """CLAP audio-tower features `[projection_dim]` per window of the upstream waveform."""

    name = "clap"
    VERSION = 1
    Config = ClapAudioConfig
    consumes = "waveform"
    produces = "audio_embedding"
    modality = "audio"

    @functools.cached_property
    def audio_input(self) -> tuple[int, float]:
        """(sample rate, input seconds) of the checkpoint's feature extractor, read from its preprocessor_config.json."""
        if self.weights.is_random:
            return LAION_RATE, float(LAION_SECONDS)
        # a hub checkpoint has preprocessor_config.json; transformers 5's save_pretrained writes processor_config.json
        # with the feature extractor's settings under "feature_extractor"
        for name in ("preprocessor_config.json", "processor_config.json"):
            path = self.weights.paths["model"] / name
            cfg = json.loads(path.read_text()) if path.is_file() else {}
            cfg = cfg.get("feature_extractor", cfg)
            if "sampling_rate" in cfg:
                return int(cfg["sampling_rate"]), float(cfg.get("max_length_s", LAION_SECONDS))
        raise WeightsError(f"clap weights '{self.config.weights}': no feature extractor settings (sampling_rate) in "
                           f"{self.weights.paths['model']}'s preprocessor_config.json or processor_config.json")

    def window(self) -> float:
        """Seconds per window (per row)."""
        return float(self.config.window_s or self.audio_input[1])

    def output_spec(self, upstream: dict[str, Any] | None = None) -> OutputSpec:
        rate = self.audio_input[0]
        got = (upstream or {}).get("sample_rate")
        if got is not None and int(got) != rate:
            raise ConfigError(f"clap: the checkpoint '{self.config.weights}' takes audio at {rate} Hz, and its upstream "
                              f"waveform is at {got} Hz; read an `audio` stage with sample_rate: {rate} "
                              "(stages.yaml's audio-48k)")
        if self.window() > self.audio_input[1]:
            raise ConfigError(f"clap: window_s {self.window()} is longer than the checkpoint's input "
                              f"({self.audio_input[1]} s), which would crop each window at random; use at most that")
        return OutputSpec("audio_embedding", (self.projection_dim(),), "float32", 1.0 / self.window(),
                          {**self.spec_extra("audio"), "window_s": self.window(), "sample_rate": rate})

    def windows(self, waveform: np.ndarray) -> list[np.ndarray]:
        """The waveform cut into `window_s` pieces: every whole window, and the tail when it is at least half a
        window (or the whole clip when it is shorter than one)."""
        size = max(1, round(self.window() * self.audio_input[0]))
        whole = len(waveform) // size
        out = [waveform[i * size:(i + 1) * size] for i in range(whole)]
        tail = waveform[whole * size:]
        if len(tail) and (not out or len(tail) * 2 >= size):
            out.append(tail)
        return out

    def compute(self, inputs: Sequence[np.ndarray], upstream: dict[str, Any] | None = None) -> list[np.ndarray]:
        import torch

        model, processor, _ = self._runtime
        def mels(batch: list[np.ndarray]) -> dict[str, Any]:
            feats = processor.feature_extractor(batch, sampling_rate=self.audio_input[0], return_tensors="pt")
            # no window is longer than the input, so none takes the fused path: LAION's inference; the feature
            # extractor's `fusion` mode would mark one window per batch at random (its training-time trick)
            return {"input_features": feats["input_features"], "is_longer": torch.zeros_like(feats["is_longer"])}

        pieces = [self.windows(np.asarray(x, np.float32).reshape(-1)) for x in inputs]
        flat = [w for p in pieces for w in p]
        return split_rows(self.batched(flat, model.get_audio_features, mels), [len(p) for p in pieces])


@register_extractor
class ClapText(_Clap, TextTower):
    """CLAP text-tower features `[projection_dim]` of each item's caption or transcript."""

    name = "clap_text"
    VERSION = 1
    Config = ClapTextConfig

    def max_tokens(self) -> int:
        # LAION-CLAP tokenizes with max_length 77, as CLIP; RoBERTa's position table (less the two entries before
        # the padding index) bounds a smaller model
        return min(TEXT_TOKENS, int(self.model_config.get("text_config", {}).get("max_position_embeddings", 514)) - 2)
