"""Shared machinery of the extractors that run a Hugging Face `transformers` model (`clip`, `clap` and their text
towers): the checkpoint, its processor, the device, the precision.

Weights are a checkpoint directory in the library's own format (`save_pretrained`: config.json, the model's
safetensors, the tokenizer's and the processor's files). `weights:` names one of:
- a local directory (or a path with a '/' that exists): loaded as it is;
- a hub id such as `openai/clip-vit-base-patch32`: looked for in the dataset's weights directory (`DIR/<id>`), then
  in the Hugging Face cache (`$HF_HOME/hub`, as `huggingface_hub` keeps it), then downloaded into that cache;
  offline and absent, the error says what to download and where to put it;
- `random:SEED`: a small model of the same architecture (`TINY` sizes), randomly initialised, with a byte-level
  tokenizer; said loudly, for tests and the offline demo only.

The store key holds the digest of the checkpoint's files that make its numbers (`checkpoint_files`: config,
processor, tokenizer, the weights transformers loads), so a download's metadata or another framework's weights
added beside them change nothing; a directory that lacks one of them is refused before anything runs.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

from . import _torch
from .base import Extractor
from .weights import ResolvedWeights, WeightsError, announce_random, path_digest, resolve_weights

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*.safetensors"]  # config, tokenizer, processor, weights: no TF / Flax files
DEFAULTS = {"clip": "openai/clip-vit-base-patch32", "clap": "laion/clap-htsat-unfused"}  # the stages' weights


@dataclass
class EncoderConfig:
    """Identity params of every transformers encoder: the checkpoint and the precision it runs at."""

    weights: str = ""
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (CPUs with AVX512-BF16/AMX, CUDA)


def hf_cache_dir() -> Path:
    """Where `huggingface_hub` keeps downloaded repos: `$HF_HUB_CACHE`, else `$HF_HOME/hub` (~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home) / "hub"


def is_checkpoint(path: Path) -> bool:
    """A directory saved by `save_pretrained`: it has a config.json."""
    return path.is_dir() and (path / "config.json").is_file()


def resolve_checkpoint(spec: str, arch: str, download: bool = True, dirs: Sequence[Path] = ()) -> ResolvedWeights:
    """`random:SEED`, a local checkpoint directory, or a hub id (the dataset's weights directory, the Hugging Face
    cache, then a download): local paths and a digest of every file, for the store key."""
    what = f"{arch} weights '{spec}'"
    if spec.startswith("random:"):
        return resolve_weights(spec, arch, {})
    path = Path(os.path.expanduser(spec))
    # a path: it exists, it is no hub id, or its first folder exists here (a mistyped local path is never downloaded)
    if path.exists() or not HUB_ID.fullmatch(spec) or Path(spec.split("/")[0]).exists():
        if not is_checkpoint(path):
            why = "does not exist" if not path.exists() else "has no config.json (not a save_pretrained directory)"
            raise WeightsError(f"{what}: {path} {why}; set `weights:` to a checkpoint directory, a hub id such as "
                               f"{DEFAULTS.get(arch, 'org/name')}, or random:SEED for a smoke run (not pretrained)")
        return _resolved(spec, "file", path.absolute())
    found = [Path(d) / spec for d in dirs if is_checkpoint(Path(d) / spec)]
    if found:
        return _resolved(spec, "pretrained", found[0])
    return _resolved(spec, "pretrained", _from_hub(spec, what, download, dirs))


def checkpoint_files(path: Path) -> list[Path]:
    """The files of a checkpoint directory that make its numbers, and so its digest: the top-level JSON and text
    files (config, processor, tokenizer) and the weights transformers loads (safetensors, else PyTorch pickles).
    Left out: dot-folders (`hf download`'s own metadata, rewritten on every download), other frameworks' weights,
    READMEs: adding them to a shared cache snapshot changes no store key."""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    weights = [p for p in files if p.suffix == ".safetensors"] or \
        [p for p in files if p.name.startswith("pytorch_model") and p.suffix == ".bin"]
    return [p for p in files if p.suffix in (".json", ".txt", ".model")] + weights


def missing_files(path: Path) -> list[str]:
    """What a checkpoint directory lacks to be loaded with its processor (a cache filled by a model-only load)."""
    names = {p.name for p in checkpoint_files(path)}
    needs = {"config.json": {"config.json"},
             "weights (*.safetensors or pytorch_model*.bin)": {n for n in names if n.endswith((".safetensors", ".bin"))},
             "a processor config": names & {"preprocessor_config.json", "processor_config.json"},
             "tokenizer files": names & {"tokenizer.json", "vocab.json", "tokenizer_config.json"}}
    return [what for what, found in needs.items() if not found]


def _resolved(spec: str, kind: str, path: Path) -> ResolvedWeights:
    from pipeline.cache import hash_key

    lacking = missing_files(path)
    if lacking:
        raise WeightsError(f"weights '{spec}': {path} lacks {', '.join(lacking)}; save the model and its processor "
                           "there with save_pretrained (or `hf download ID --local-dir DIR`)")
    return ResolvedWeights(spec, kind, hash_key({"model": path_digest(path, checkpoint_files(path))}), {"model": path})


def _from_hub(repo: str, what: str, download: bool, dirs: Sequence[Path]) -> Path:
    """The repo's snapshot in the Hugging Face cache, downloaded there when allowed and absent."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise WeightsError(f"{what}: reading a hub id needs huggingface_hub: pip install -e '.[encoders]'") from None
    where = " or ".join([f"{Path(d) / repo}" for d in dirs] + [f"the Hugging Face cache ({hf_cache_dir()})"])
    home = f"copy DIR to {Path(dirs[0]) / repo}" if dirs else \
        f"give the dataset `weights: ./W` and copy DIR to W/{repo}"
    advice = (f"download it where the hub is reachable (`hf download {repo} --local-dir DIR`), then set the stage's "
              f"`weights: DIR` or {home}; or use `weights: random:0` for a smoke run (not pretrained)")
    cache = str(hf_cache_dir())
    why = "is not in"
    try:
        snap = Path(snapshot_download(repo, allow_patterns=DOWNLOAD_PATTERNS, local_files_only=True, cache_dir=cache))
        lacking = missing_files(snap)
        if not lacking:
            return snap
        why = f"is incomplete (no {', no '.join(lacking)}) in"  # e.g. a cache a model-only load filled
    except Exception:  # not in the cache (LocalEntryNotFoundError and kin)
        pass
    if not download:
        raise WeightsError(f"{what}: {repo} {why} {where}; {advice}")
    log.info("downloading %s into %s", repo, hf_cache_dir())
    try:
        snap = Path(snapshot_download(repo, allow_patterns=DOWNLOAD_PATTERNS, cache_dir=cache))
        if not any(snap.glob("*.safetensors")):  # an older repo: PyTorch pickles only (loaded weights_only)
            snap = Path(snapshot_download(repo, allow_patterns=[*DOWNLOAD_PATTERNS, "pytorch_model*.bin"], cache_dir=cache))
    except Exception as e:  # any network, HTTP or missing-repo failure ends in the same advice
        raise WeightsError(f"{what}: {repo} {why} {where} and could not be downloaded "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {advice}") from None
    return snap  # `_resolved` refuses it, naming what it lacks, when it is no complete checkpoint


def byte_vocab(special: Sequence[str], word_end: str | None = None) -> dict[str, int]:
    """A byte-level BPE vocabulary without merges: the special tokens, the 256 byte symbols (and each with
    `word_end` appended, CLIP's end-of-word mark): any text encodes, one token per byte."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    tokens = [*special, *symbols, *([s + word_end for s in symbols] if word_end else [])]
    return {t: i for i, t in enumerate(tokens)}


class TransformersEncoder(Extractor):
    """One tower of a transformers model: subclasses say which family (`arch`, `model_class`), how to build its
    small random model (`tiny_config`, `tiny_processor`), and what `load` and `compute` feed it."""

    arch: ClassVar[str]  # "clip" or "clap": the model family, and its config's model_type
    model_class: ClassVar[str]  # the transformers class of the whole model (CLIPModel, ClapModel)

    @functools.cached_property
    def weights(self) -> ResolvedWeights:
        return resolve_checkpoint(self.config.weights, self.arch, download=self.allow_download, dirs=self.weights_dirs)

    def weights_digest(self) -> str | None:
        return self.weights.digest

    @functools.cached_property
    def model_config(self) -> dict[str, Any]:
        """The checkpoint's config.json as a dict (the tiny config for random:SEED), read without loading the model."""
        if self.weights.is_random:
            return self.tiny_config().to_dict()
        path = self.weights.paths["model"] / "config.json"
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise WeightsError(f"{self.arch} weights '{self.weights.spec}': cannot read {path} ({e})") from None
        if cfg.get("model_type") != self.arch:
            raise WeightsError(f"{self.arch} weights '{self.weights.spec}': {path} is a '{cfg.get('model_type')}' "
                               f"checkpoint, not a '{self.arch}' one")
        return cfg

    def projection_dim(self) -> int:
        """The width of the shared space: the rows' dims."""
        return int(self.model_config.get("projection_dim", 512))

    def tiny_config(self) -> Any:
        """The small config `random:SEED` builds (a transformers config object)."""
        raise NotImplementedError

    def tiny_processor(self) -> Any:
        """The processor of the small random model (a byte-level tokenizer, the family's default preprocessing)."""
        raise NotImplementedError

    @functools.cached_property
    def processor(self) -> Any:
        """The checkpoint's processor (image processor or feature extractor, and tokenizer): what `load` may use in
        the decode threads, without the model."""
        if self.weights.is_random:
            return self.tiny_processor()
        import transformers

        return self._loading(lambda path: transformers.AutoProcessor.from_pretrained(path))

    @functools.cached_property
    def _runtime(self) -> tuple[Any, Any, Any]:
        """(model on the device in eval mode, processor, device): one per worker process."""
        import torch
        import transformers

        announce_random(self.arch, self.weights)
        device = _torch.pick_device(self.execution.device if self.execution else "auto")
        cls = getattr(transformers, self.model_class)
        if self.weights.is_random:
            torch.manual_seed(self.weights.seed)
            model = cls(self.tiny_config())
        else:
            model = self._loading(cls.from_pretrained)
        return _torch.prepare_model(model, device, image=False), self.processor, device

    def _loading(self, load: Any) -> Any:
        """`load(checkpoint directory)`, a failure said as a WeightsError naming the directory and the class."""
        path = self.weights.paths["model"]
        try:
            return load(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{self.arch} weights '{self.weights.spec}': cannot load {path} with transformers' "
                               f"{self.model_class} ({first}); is it a complete save_pretrained directory of that "
                               "model?") from None

    def batched(self, items: Sequence[Any], fn: Any, inputs: Any) -> Any:
        """`fn(**inputs(batch)).pooler_output` (the projected features) of `items`, `batch_size` at a time, as one
        float32 array `[len(items), projection_dim]`: the inputs moved to the device, under the stage's precision."""
        import numpy as np
        import torch

        _, _, device = self._runtime
        outs = [np.zeros((0, self.projection_dim()), np.float32)]
        for start in range(0, len(items), self.batch_size):
            batch = inputs(items[start:start + self.batch_size])
            with torch.inference_mode(), _torch.autocast(device, self.config.precision):
                out = fn(**{k: v.to(device, non_blocking=True) for k, v in batch.items()})
            outs.append(out.pooler_output.float().cpu().numpy())
        return np.concatenate(outs)

    def spec_extra(self, tower: str) -> dict[str, Any]:
        """What every store of a tower records: its weights (and whether they are random), family, tower, precision."""
        return {"weights": self.config.weights, "random_weights": self.weights.is_random, "arch": self.arch,
                "tower": tower, "precision": self.config.precision}

    @property
    def batch_size(self) -> int:
        return max(1, self.execution.batch_size if self.execution else 32)


class TextTower(TransformersEncoder):
    """A model's text tower over the items' captions or transcripts (the first text of each item): one row per
    item, `[1, projection_dim]`. Rows are keyed by the text itself, so a sentence is embedded once."""

    reads = "text"
    produces = "text_embedding"
    modality = "text"

    def output_spec(self, upstream: dict[str, Any] | None = None) -> Any:
        from .base import OutputSpec

        return OutputSpec("text_embedding", (self.projection_dim(),), "float32", None,
                          {**self.spec_extra("text"), "max_tokens": self.max_tokens()})

    def max_tokens(self) -> int:
        """Tokens a text keeps (the rest is cut, as the model was trained): its position table's length."""
        raise NotImplementedError

    def load(self, clip: Any, upstream: Any = None) -> Any:
        from pipeline.datasets import DatasetError

        if not clip.text or not clip.text[0].strip():
            raise DatasetError(f"item '{clip.clip_id}' has no caption or transcript")
        return clip.text[0]

    def compute(self, inputs: Sequence[Any], upstream: dict[str, Any] | None = None) -> list[Any]:
        return [row[None] for row in self.embed_texts(list(inputs))]

    def embed_texts(self, texts: list[str]) -> Any:
        """`[len(texts), projection_dim]` float32: tokenized in batches (padded to the longest, cut at
        `max_tokens`), through the text tower and its projection."""
        model, processor, _ = self._runtime

        def tokens(batch: list[str]) -> dict[str, Any]:
            enc = processor.tokenizer(batch, padding=True, truncation=True, max_length=self.max_tokens(),
                                      return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

        return self.batched(texts, model.get_text_features, tokens)
