"""`places_audio`: the Places Audio Caption corpus (Harwath et al.): spoken descriptions of Places205
images, with ASR transcripts; the published train / val split."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, Manifest

log = logging.getLogger(__name__)


@dataclass
class PlacesAudioConfig:
    image_root: str | None = None  # Places205 images256/; default ROOT/images
    splits: list[str] | None = None  # default: train and val
    skip_missing: bool = False


@register_dataset
class PlacesAudioDataset(DatasetAdapter):
    """PlacesAudio_400k_distro: metadata/{train,val}.json entries {wav, image, asr_text} as clips."""

    name = "places_audio"
    Config = PlacesAudioConfig
    published = ("Harwath et al., NeurIPS 2016 / ECCV 2018: groups.csail.mit.edu/sls/downloads/placesaudio; "
                 "images: Places205 (places.csail.mit.edu)")
    layout = ("ROOT/metadata/train.json, ROOT/metadata/val.json: {\"image_base_path\", \"audio_base_path\",\n"
              "  \"data\": [{\"wav\": \"wavs/...wav\", \"image\": \"a/abbey/....jpg\", \"asr_text\": ..., \"uttid\": ...}]}\n"
              "wav paths are relative to ROOT; image paths to ROOT/images or the `image_root` param (Places205\n"
              "images256/); the json's base paths are ignored")

    def _image_root(self) -> Path:
        # The json's image_base_path is a placeholder from the authors' machines, and a path outside
        # the root must come from the user, not from metadata: only `image_root` or ROOT/images.
        if self.config.image_root:
            root = Path(self.config.image_root)
            root = root if root.is_absolute() else self.root / root
            if not root.is_dir():
                raise self.error(f"image_root {root} is not a folder; point it at Places205's images256/")
            return root
        return self.require("images", "Places205 images (or set the `image_root` param)", directory=True)

    def manifest(self) -> Manifest:
        self.prepare()
        meta = self.require("metadata", "metadata", directory=True)
        clips = []
        images = self._image_root()
        for split in self.config.splits or ["train", "val"]:
            path = self.require(f"{split}.json", f"{split} metadata", base=meta)
            doc = self.read_json(path)
            data = doc.get("data") if isinstance(doc, dict) else None
            if not isinstance(data, list):
                raise self.error(f"{path} has no 'data' list")
            for n, d in enumerate(data):
                if not isinstance(d, dict) or not isinstance(d.get("wav"), str) or not isinstance(d.get("image"), str):
                    raise self.error(f"{path}: data[{n}] lacks 'wav' or 'image': {str(d)[:120]}")
                bad = [k for k in ("asr_text", "uttid") if d.get(k) is not None and not isinstance(d[k], str)]
                if bad:
                    raise self.error(f"{path}: data[{n}].{bad[0]} must be a string, got {d[bad[0]]!r}")
                what = f"{path.name} data[{n}]"
                wav = self.under(d["wav"], what)
                clips.append(Clip(
                    clip_id=str(d.get("uttid") or Path(d["wav"]).with_suffix("").as_posix()), split=split,
                    group=d["image"], text=(d["asr_text"],) if d.get("asr_text") else (),
                    media={"audio": wav, "image": self.under(d["image"], what, images)}))
        if not clips:
            raise self.error("the metadata lists no utterances")
        splits_of: dict[str | None, set] = {}
        for c in clips:
            splits_of.setdefault(c.group, set()).add(c.split)
        shared = {g for g, s in splits_of.items() if len(s) > 1}
        if shared:  # a picture in two splits: one group per split, so no group spans train and val
            log.info("dataset '%s': %d image(s) have utterances in more than one split; they are grouped per split",
                     self.dataset_name, len(shared))
            clips = [dataclasses.replace(c, group=f"{c.split}/{c.group}") if c.group in shared else c for c in clips]
        clips = self.check_media(clips, self.config.skip_missing)
        return Manifest(self.dataset_name, self.root, clips)
