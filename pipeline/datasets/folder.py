"""`folder`: a directory of class subfolders of videos (the raw VEGAS layout) as a manifest."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, DatasetError, Manifest, class_balanced_folds, is_media


@dataclass
class FolderConfig:
    n_folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_folds < 1:
            raise ValueError(f"n_folds must be >= 1, got {self.n_folds}")


@register_dataset
class FolderDataset(DatasetAdapter):
    """Every media file under `root/<class>/` is a clip of that class; clip id = `<class>/<file stem>`."""

    name = "folder"
    Config = FolderConfig
    layout = ("ROOT/<class name>/<clip>.mp4 (any of mp4 mkv avi mov webm wav flac mp3 ...);\n"
              "one subfolder per class, the folder name is the label")

    def manifest(self) -> Manifest:
        self.prepare()
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith((".", "__MACOSX")))
        if not classes:
            raise DatasetError(f"dataset '{self.dataset_name}': no class subfolders in {self.root}; "
                               f"expected layout:\n{self.layout}")
        entries = []
        skipped: list[tuple[str, str]] = []
        for cls in classes:
            for parts, is_dir, is_file in _walk(self.root / cls):  # in the order of sorted(rglob("*"))
                where = "/".join((cls, *parts))
                p = self.root / where
                if any(part.startswith(".") for part in parts):
                    continue  # hidden files (.DS_Store, editor swap files) are nobody's clips
                if is_media(p) and not is_dir:  # files, and links (dangling ones become failures)
                    entries.append((f"{cls}/{where[len(cls) + 1:].rsplit('.', 1)[0]}", p, cls))
                elif is_media(p):
                    skipped.append((where, "a folder with a media file's name"))
                elif is_file:
                    skipped.append((where, "not a media file type"))
        if not entries:
            raise DatasetError(f"dataset '{self.dataset_name}': class folders under {self.root} hold no media files")
        ids = [e[0] for e in entries]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DatasetError(f"dataset '{self.dataset_name}': two files share a clip id {dup[:3]} "
                               "(same name, different extension); rename one")
        folds = class_balanced_folds(ids, [e[2] for e in entries], self.config.n_folds, self.config.seed)
        clips = [Clip(clip_id=cid, media={"video": p.absolute()}, label=cls, fold=f)
                 for (cid, p, cls), f in zip(entries, folds)]
        return Manifest(self.dataset_name, self.root, clips, classes, skipped)


def _walk(top: Path) -> list[tuple[tuple[str, ...], bool, bool]]:
    """Everything under `top` as (relative parts, is a directory, is a file), sorted as pathlib sorts the
    paths of `top.rglob("*")` (by parts); os.scandir's cached entry types spare a stat per file."""
    out: list[tuple[tuple[str, ...], bool, bool]] = []
    stack: list[tuple[Path, tuple[str, ...]]] = [(top, ())]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            parts = (*prefix, e.name)
            is_dir = e.is_dir(follow_symlinks=False)
            if is_dir:
                stack.append((Path(e.path), parts))
            try:
                is_file = e.is_file()
            except OSError:  # a symlink loop: not a file (it becomes a failure with its reason)
                is_file = False
            out.append((parts, is_dir, is_file))
    out.sort(key=lambda x: x[0])
    return out
