"""Weights: a named pretrained set (file with its hash in the name, URL, preprocessing, metadata),
an explicit file, or `random:SEED`; resolved to local files with a content digest for cache keys.

A name resolves to the cache directory (`$TORCH_HOME/hub/checkpoints`, torch's convention), then to
a download; offline with no file, the error names the file and where to put it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.cache import DigestMemo, hash_key

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """Weights could not be found, downloaded or loaded; the message says where to put them."""


@dataclass(frozen=True)
class WeightsFile:
    """One published file: its URL, whose basename carries a prefix of its sha256."""

    url: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str | None:
        stem = self.filename.rsplit(".", 1)[0]
        tail = stem.rsplit("-", 1)[-1]
        return tail if len(tail) >= 6 and all(c in "0123456789abcdef" for c in tail) else None


@dataclass(frozen=True)
class PretrainedWeights:
    """A named weights set: its files, the preprocessing it expects, and metadata."""

    name: str
    files: dict[str, WeightsFile]
    meta: dict[str, Any] = field(default_factory=dict)
    transforms: Callable[[], Any] | None = None


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights made concrete: local paths (role -> path) or a seed, and a digest for cache keys."""

    spec: str
    kind: str  # "pretrained", "file" or "random"
    digest: str
    paths: dict[str, Path] = field(default_factory=dict)
    seed: int | None = None

    @property
    def is_random(self) -> bool:
        return self.kind == "random"


def cache_dir() -> Path:
    """Where named weights live: `$TORCH_HOME/hub/checkpoints` (default ~/.cache/torch/hub/checkpoints)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def _memo() -> DigestMemo:
    root = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "avpipeline"
    return DigestMemo(root / "weights-digests.sqlite")


def _download(f: WeightsFile, dest: Path, what: str, param: str = "weights") -> Path:
    import torch.hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", f.url, dest)
    try:
        torch.hub.download_url_to_file(f.url, str(dest), hash_prefix=f.hash_prefix, progress=False)
    except Exception as e:  # any network, HTTP or hash failure ends in the same advice
        smoke = ", or use `weights: random:0` for a smoke run (not pretrained)" if param == "weights" else ""
        raise WeightsError(
            f"{what}: {f.filename} is not in {dest.parent} and could not be downloaded ({type(e).__name__}: {e}). "
            f"Download {f.url} and place it at {dest}, or set `{param}:` to a local file path{smoke}") from None
    return dest


def resolve_weights(spec: str, arch: str,
                    pretrained: dict[str, PretrainedWeights] | Callable[[], dict[str, PretrainedWeights]],
                    download: bool = True, param: str = "weights", dirs: Sequence[Path] = ()) -> ResolvedWeights:
    """`random:SEED`, a pretrained name (`dirs` (a dataset's weights directory), the cache dir, then download)
    or a path to a local file.

    `pretrained` may be a callable, so that `random:SEED` never imports what builds the table."""
    what = f"{arch} weights '{spec}'"
    if spec.startswith("random:"):
        try:
            seed = int(spec.split(":", 1)[1])
        except ValueError:
            raise WeightsError(f"{what}: expected random:SEED with an integer seed, e.g. random:0") from None
        return ResolvedWeights(spec, "random", hash_key(["random", arch, seed]), seed=seed)
    if callable(pretrained):
        pretrained = pretrained()
    if spec in pretrained:
        paths = {}
        for role, f in pretrained[spec].files.items():
            found = [Path(d) / f.filename for d in dirs if (Path(d) / f.filename).is_file()]
            path = found[0] if found else cache_dir() / f.filename
            if not path.is_file():
                where = " or ".join([str(d) for d in dirs] + [str(cache_dir())])
                if not download:
                    raise WeightsError(f"{what}: {f.filename} is not in {where}; download {f.url} "
                                       f"and place it at {path}")
                _download(f, path, what, param)
            paths[role] = path
    else:
        path = Path(os.path.expanduser(spec))
        if not path.is_file():
            names = ", ".join(sorted(pretrained)) or "(none)"
            why = "is a directory, not a weights file" if path.is_dir() else "does not exist"
            raise WeightsError(f"{what}: {path} {why}, and it is not a known name ({names}) nor random:SEED; "
                               "pass the path of a weights file")
        paths = {"model": path.absolute()}
    memo = _memo()
    digest = hash_key({role: path_digest(p, memo=memo) for role, p in sorted(paths.items())})
    return ResolvedWeights(spec, "pretrained" if spec in pretrained else "file", digest, paths)


def path_digest(path: Path, files: Sequence[Path] | None = None, memo: DigestMemo | None = None) -> str:
    """The content digest of a weights file, or of a directory: of `files` in it (default: every file, as a
    SavedModel's), each named by its path inside."""
    memo = memo or _memo()
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()] if files is None else files
        return hash_key(sorted((str(p.relative_to(path)), memo.digest(p)) for p in files))
    return memo.digest(path)


def load_state_dict(path: Path, what: str) -> dict[str, Any]:
    """torch.load with weights_only=True; numpy arrays (as in the published VGGish PCA file) allowed."""
    import numpy as np
    import torch

    try:
        core = getattr(np, "_core", None) or np.core
        # pickles from the numpy 1.x era name `numpy.core...` (the published VGGish PCA file does)
        safe: list[Any] = [core.multiarray._reconstruct, np.ndarray, np.dtype,
                           (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                           type(np.dtype("float32")), type(np.dtype("float64"))]
        with torch.serialization.safe_globals(safe):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{what}: cannot load {path} as a state dict ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{what}: {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_into(model: Any, state: dict[str, Any], what: str) -> None:
    """model.load_state_dict, with a mismatch reported as a WeightsError naming the file's problem."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise WeightsError(f"{what}: the file does not fit this network ({first} ...); "
                           "is it the right architecture?") from None


def announce_random(arch: str, weights: ResolvedWeights) -> None:
    """Say loudly that results come from a randomly initialised network."""
    if weights.is_random:
        log.warning("%s: RANDOM WEIGHTS (%s) - features are not pretrained; use only for smoke tests",
                    arch, weights.spec)
