"""Manifests: what a dataset holds (clip id, media paths, label, fold, text), and adapters to build one."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ..cache import DigestMemo, hash_key

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """A dataset's root or metadata is missing or malformed; the message says what was expected."""


@dataclass(frozen=True)
class Clip:
    """One item of a dataset. `media` maps a role ('video', 'audio', 'image', 'audio_features', ...) to
    an absolute path; `refs` says where inside that file the item lives (an HDF5 row: 'audio_train[12]').

    `split` is the corpus's published split (train / val / test), `fold` a cross-validation fold;
    `group` ties items that describe the same thing (the 5 spoken captions of one image);
    `words` are (word, start s, end s) timestamps of a spoken caption; `box` is the region (x, y, w, h, in the
    image's pixels) that a phrase names and `image_size` the (W, H) of the item's image (Visual Genome).
    Like `text` and `words`, both are annotations: they stay out of `Manifest.clip_keys` (media identity);
    a task that scores them puts them in its own digest."""

    clip_id: str
    media: dict[str, Path]
    label: str | None = None
    fold: int | None = None
    start: float | None = None
    end: float | None = None
    text: tuple[str, ...] = ()
    split: str | None = None
    group: str | None = None
    refs: dict[str, str] = field(default_factory=dict)
    words: tuple[tuple[str, float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None
    image_size: tuple[int, int] | None = None

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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry under root, why it is not a clip)
    annotations: dict[str, Path] = field(default_factory=dict)  # split -> COCO instances json (object masks)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for c in self.clips:
            if c.clip_id in seen:
                raise DatasetError(f"dataset '{self.dataset}': clip id '{c.clip_id}' appears twice; "
                                   "the metadata lists it twice: remove or rename one entry")
            seen.add(c.clip_id)

    def __len__(self) -> int:
        return len(self.clips)

    def media_digests(self, memo: DigestMemo) -> dict[str, dict[str, str]]:
        """Clip id -> role -> content digest of that media file (memoized by size and mtime)."""
        out = {}
        seen: dict[str, str] = {}  # feature datasets name one file for many clips; pictures have many captions
        for c in self.clips:
            out[c.clip_id] = {role: seen[str(p)] if str(p) in seen else seen.setdefault(str(p), memo.digest(p))
                              for role, p in sorted(c.media.items())}
        return out

    def clip_keys(self, memo: DigestMemo | None = None,
                  digests: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
        """Clip id -> key of its content (media digests and segment); ordered like `clips`."""
        if digests is None:
            assert memo is not None
            digests = self.media_digests(memo)
        keys = {}
        for c in self.clips:
            media = digests[c.clip_id]
            ident: list[Any] = [c.clip_id, media, c.start, c.end]
            if c.refs:  # only then: keys of media clips stay what they were before refs existed
                ident.append(sorted(c.refs.items()))
            keys[c.clip_id] = hash_key(ident)
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
    published: ClassVar[str] = ""  # where the corpus is distributed
    kind: ClassVar[str] = "media"  # or "features": pre-extracted arrays, read by `imported` stages
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

    def feature_spec(self) -> dict[str, dict[str, Any]]:
        """For a features dataset: per view ('audio', 'visual'), the source rows' dims and dtype."""
        raise DatasetError(f"dataset '{self.dataset_name}' ({self.name}) holds media, not pre-extracted features")

    def error(self, what: str) -> DatasetError:
        """A DatasetError naming this dataset, what is wrong, and the layout the adapter expects."""
        return DatasetError(f"dataset '{self.dataset_name}' ({self.name}): {what}; expected layout under "
                            f"{self.root}:\n{self.layout}")

    def require(self, relative: str | Path, what: str, directory: bool = False, base: Path | None = None) -> Path:
        """`root/relative` (or `base/relative`), which must exist; otherwise one error naming it."""
        path = (base or self.root) / relative
        if not (path.is_dir() if directory else path.is_file()):
            kind = "folder" if directory else "file"
            raise self.error(f"missing {what} {kind} {path}")
        return path

    def find(self, candidates: Sequence[str | Path], what: str, directory: bool = False) -> Path:
        """The first of `candidates` (relative to root) that exists; otherwise one error naming them all."""
        for rel in candidates:
            path = self.root / rel
            if path.is_dir() if directory else path.is_file():
                return path
        names = " or ".join(str(self.root / c) for c in candidates)
        raise self.error(f"missing {what}: looked for {names}")

    def read_json(self, path: Path) -> Any:
        """Parse a metadata json file; a malformed one is an error naming the file, line and column."""
        import json

        try:
            return json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"dataset '{self.dataset_name}': malformed json in {path} at line {e.lineno}, "
                               f"column {e.colno}: {e.msg}; re-download or fix that file") from None
        except UnicodeDecodeError as e:
            raise DatasetError(f"dataset '{self.dataset_name}': {path} is not UTF-8 text ({e.reason})") from None

    def read_lines(self, path: Path) -> list[str]:
        """Non-empty stripped lines of a text metadata file."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise DatasetError(f"dataset '{self.dataset_name}': {path} is not UTF-8 text ({e.reason})") from None
        return [ln.strip() for ln in text.splitlines() if ln.strip()]

    def under(self, relative: str, what: str, base: Path | None = None) -> Path:
        """A metadata path joined onto the root (or `base`), refused if it escapes it."""
        return resolve_under(base or self.root, relative, f"dataset '{self.dataset_name}': {what}")

    def check_media(self, clips: list[Clip], skip_missing: bool = False) -> list[Clip]:
        """Every media file of every clip must exist; missing ones are one error (or, with
        `skip_missing`, those clips are dropped with a warning)."""
        missing = [(c, p) for c in clips for p in c.media.values() if not (p.is_file() or p.is_symlink())]
        if not missing:
            return clips
        if skip_missing:
            gone = {c.clip_id for c, _ in missing}
            log.warning("dataset '%s': %d clip(s) dropped, their media is missing (first: %s)",
                        self.dataset_name, len(gone), missing[0][1])
            return [c for c in clips if c.clip_id not in gone]
        shown = "\n  ".join(str(p) for _, p in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(f"dataset '{self.dataset_name}' ({self.name}): {len(missing)} media file(s) named in "
                           f"the metadata are missing:\n  {shown}{more}\nrestore them, or set "
                           f"`skip_missing: true` in the dataset's params to leave those clips out")


def resolve_under(root: Path, relative: str, what: str) -> Path:
    """Join a metadata path onto `root`, refusing anything that escapes it.

    The check is lexical (`..`, absolute paths): a folder under the root that is a symlink to
    another disk is the user's choice and stays allowed."""
    base = Path(os.path.normpath(root.absolute()))
    p = Path(os.path.normpath(base / relative))
    if not p.is_relative_to(base):
        raise DatasetError(f"{what}: path '{relative}' escapes the dataset root {root}; "
                           "fix the metadata file")
    return p


VIDEO_EXTENSIONS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".flv", ".mpg", ".mpeg"}
AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac", ".opus"}


def is_media(path: Path) -> bool:
    """Whether the extension is one of the video or audio types we read."""
    return path.suffix.lower() in VIDEO_EXTENSIONS | AUDIO_EXTENSIONS and not path.name.startswith(".")



MARKER = "synthetic.json"  # a generated dataset's params, written last: its presence marks the set complete


class GeneratedDataset(DatasetAdapter):
    """A dataset written by its own generator on first use: `_write(tmp)` fills a temporary folder,
    which becomes `root` by one rename once complete (a killed generation leaves no half set)."""

    def _write(self, tmp: Path) -> None:
        raise NotImplementedError

    def generation_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The params among `params` that decide the generated files (all of them, unless a generator has params
        that only decide how the files are read)."""
        return params

    def prepare(self) -> None:
        """Generate the set unless `root` already holds this exact configuration."""
        import json
        import shutil
        import uuid
        from dataclasses import asdict, fields

        from filelock import FileLock

        params = self.generation_params(asdict(self.config))
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root) + ".lock"):
            marker = self.root / MARKER
            if marker.exists():
                # a param added to the generator later is absent from older markers: its default is what made them
                found = self.generation_params({**{f.name: f.default for f in fields(self.config)},
                                                **json.loads(marker.read_text())})
                if found != params:
                    raise DatasetError(
                        f"dataset '{self.dataset_name}': {self.root} holds a {self.name} set generated with "
                        f"{found}, not {params}; delete that folder or point `root` elsewhere")
                return
            if self.root.exists() and any(self.root.iterdir()):
                raise DatasetError(f"dataset '{self.dataset_name}': {self.root} exists and is not a generated "
                                   f"set (no {MARKER}); point `root` at a new folder")
            tmp = self.root.with_name(f".tmp-{self.root.name}-{uuid.uuid4().hex[:8]}")
            tmp.mkdir(parents=True)
            try:
                self._write(tmp)
                (tmp / MARKER).write_text(json.dumps(params))
                if self.root.exists():
                    self.root.rmdir()
                tmp.rename(self.root)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)

    def generated(self, name: str) -> Path:
        """A file of the generated set; a clear error when the set was not generated (or was damaged)."""
        if not (self.root / MARKER).exists():
            raise DatasetError(f"dataset '{self.dataset_name}': not generated yet under {self.root}; "
                               f"`pipeline run extract --dataset {self.dataset_name}` generates it")
        path = self.root / name
        if not path.exists():
            raise DatasetError(f"dataset '{self.dataset_name}': {path} is missing; delete {self.root} to regenerate")
        return path
