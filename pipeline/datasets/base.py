"""Manifests: what a dataset holds (clip id, media paths, label, fold, text), and adapters to build one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ..cache import DigestMemo, hash_key


class DatasetError(RuntimeError):
    """A dataset's root or metadata is missing or malformed; the message says what was expected."""


@dataclass(frozen=True)
class Clip:
    """One item of a dataset. `media` maps a role ('video', 'audio', 'image') to an absolute path."""

    clip_id: str
    media: dict[str, Path]
    label: str | None = None
    fold: int | None = None
    start: float | None = None
    end: float | None = None
    text: tuple[str, ...] = ()

    def source(self, *roles: str) -> Path:
        """The first media path among `roles` (e.g. 'audio', then 'video')."""
        for role in roles:
            if role in self.media:
                return self.media[role]
        raise DatasetError(f"clip '{self.clip_id}' has none of the media {roles}; it has {sorted(self.media)}")


@dataclass
class Manifest:
    """The clips of one dataset, in a fixed order."""

    dataset: str
    root: Path
    clips: list[Clip]
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for c in self.clips:
            if c.clip_id in seen:
                raise DatasetError(f"dataset '{self.dataset}': clip id '{c.clip_id}' appears twice")
            seen.add(c.clip_id)

    def __len__(self) -> int:
        return len(self.clips)

    def clip_keys(self, memo: DigestMemo) -> dict[str, str]:
        """Clip id -> key of its content (media digests and segment); ordered like `clips`."""
        keys = {}
        for c in self.clips:
            media = {role: memo.digest(p) for role, p in sorted(c.media.items())}
            keys[c.clip_id] = hash_key([c.clip_id, media, c.start, c.end])
        return keys

    def digest(self, memo: DigestMemo) -> str:
        """Digest of the whole manifest's content (clip ids plus file digests)."""
        return hash_key(list(self.clip_keys(memo).items()))

    def labels(self) -> np.ndarray:
        """Integer class index per clip (index into `classes`)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[c.label] for c in self.clips], dtype=np.int64)

    def by_id(self) -> dict[str, Clip]:
        """Clip id -> Clip."""
        return {c.clip_id: c for c in self.clips}


def class_balanced_folds(clip_ids: Sequence[str], labels: Sequence[str], n_folds: int, seed: int) -> list[int]:
    """Assign folds so that each class is spread evenly over `n_folds`; deterministic given `seed`."""
    if n_folds < 1:
        raise DatasetError(f"n_folds must be >= 1, got {n_folds}")
    rng = np.random.default_rng(seed)
    folds = [0] * len(clip_ids)
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    offset = 0
    for lab in sorted(by_class):
        members = sorted(by_class[lab], key=lambda i: clip_ids[i])
        order = rng.permutation(len(members))
        for rank, j in enumerate(order):
            folds[members[j]] = (rank + offset) % n_folds
        offset += len(members)  # rotate so leftovers of each class land on different folds
    return folds


class DatasetAdapter:
    """Turns a corpus's on-disk layout under `root` into a Manifest."""

    name: ClassVar[str]
    layout: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init__(self, name: str, root: Path, config: Any) -> None:
        self.dataset_name = name
        self.root = Path(root)
        self.config = config

    def prepare(self) -> None:
        """Make the data available (a generator writes it); a plain adapter checks the root exists."""
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset '{self.dataset_name}': root {self.root} does not exist; expected layout:\n{self.layout}")

    def manifest(self) -> Manifest:
        """Read the layout into a Manifest."""
        raise NotImplementedError


def resolve_under(root: Path, relative: str, what: str) -> Path:
    """Join a metadata path onto `root`, refusing anything that escapes it."""
    p = (root / relative).resolve()
    if not p.is_relative_to(root.resolve()):
        raise DatasetError(f"{what}: path '{relative}' escapes the dataset root {root}; "
                           "fix the metadata file")
    return p


VIDEO_EXTENSIONS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".flv", ".mpg", ".mpeg"}
AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac", ".opus"}


def is_media(path: Path) -> bool:
    """Whether the extension is one of the video or audio types we read."""
    return path.suffix.lower() in VIDEO_EXTENSIONS | AUDIO_EXTENSIONS and not path.name.startswith(".")

