"""A corpus in one folder, as a plugin: `toy-csv`, media files listed in ROOT/index.csv (file, label, split). Paths in
the index are joined onto the root and refused if they leave it (`DatasetAdapter.under`)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.base import Clip, DatasetAdapter, Manifest
from pipeline.registry import register_dataset


@dataclass
class CsvCorpusConfig:
    index: str = "index.csv"  # the index file, relative to the root


@register_dataset
class CsvCorpus(DatasetAdapter):
    """One clip per row of the index: its media file, class label and split; clip id = the file's path without its
    extension."""

    name = "toy-csv"
    Config = CsvCorpusConfig
    layout = "ROOT/index.csv with a header row `file,label,split`; each file a media path relative to ROOT"

    def manifest(self) -> Manifest:
        self.prepare()
        index = self.require(self.config.index, "index")
        with open(index, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"file", "label", "split"} <= set(rows[0]):
            raise self.error(f"{index} needs a header row `file,label,split` and one row per clip")
        clips = []
        for line, row in enumerate(rows, start=2):
            path = self.under(row["file"], f"{index.name} line {line}")
            clips.append(Clip(clip_id=str(Path(row["file"]).with_suffix("")), media={"audio": path},
                              label=row["label"] or None, split=row["split"] or None))
        return Manifest(self.dataset_name, self.root, self.check_media(clips), sorted({c.label for c in clips
                                                                                       if c.label}))
