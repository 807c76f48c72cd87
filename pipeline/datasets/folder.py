"""`folder`: a directory of class subfolders of videos (the raw VEGAS layout) as a manifest."""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import register_dataset
from .base import DatasetAdapter, DatasetError, Clip, Manifest, class_balanced_folds, is_media


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
            for p in sorted((self.root / cls).rglob("*")):
                where = p.relative_to(self.root).as_posix()
                if any(part.startswith(".") for part in p.relative_to(self.root).parts):
                    continue  # hidden files (.DS_Store, editor swap files) are nobody's clips
                if is_media(p) and (p.is_file() or p.is_symlink()):  # dangling links become failures
                    rel = p.relative_to(self.root / cls).with_suffix("")
                    entries.append((f"{cls}/{rel.as_posix()}", p, cls))
                elif is_media(p):
                    skipped.append((where, "a folder with a media file's name"))
                elif p.is_file():
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
