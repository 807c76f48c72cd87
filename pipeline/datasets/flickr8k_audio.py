"""`flickr8k_audio`: the Flickr8k Audio Caption Corpus (Harwath & Glass, 2015): 5 spoken captions per
Flickr8k image. One clip per spoken caption, grouped by image; Karpathy's split when present."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..registry import register_dataset
from .base import Clip, DatasetAdapter, Manifest


@dataclass
class Flickr8kAudioConfig:
    images_dir: str | None = None  # default: the first of Flicker8k_Dataset, Flickr8k_Dataset/Flicker8k_Dataset, images
    skip_missing: bool = False


@register_dataset
class Flickr8kAudioDataset(DatasetAdapter):
    """Flickr8k images + flickr_audio/wavs/<image>_<k>.wav + captions; split from dataset_flickr8k.json."""

    name = "flickr8k_audio"
    Config = Flickr8kAudioConfig
    published = ("Harwath & Glass 2015: groups.csail.mit.edu/sls/downloads/flickraudio (flickr_audio.tar.gz); "
                 "Flickr8k images and text: Hodosh et al. 2013; dataset_flickr8k.json: Karpathy's splits")
    layout = ("ROOT/Flicker8k_Dataset/<image>.jpg (or Flickr8k_Dataset/Flicker8k_Dataset/, images/)\n"
              "ROOT/flickr_audio/wavs/<image>_<k>.wav, k = 0..4; flickr_audio/wav2capt.txt (optional)\n"
              "ROOT/Flickr8k_text/Flickr8k.token.txt   <image>.jpg#<k><TAB><caption>\n"
              "ROOT/dataset_flickr8k.json (or Flickr8k_text/dataset_flickr8k.json): Karpathy split, optional;\n"
              "without it, Flickr8k_text/Flickr_8k.{train,dev,test}Images.txt give the split when present")

    def _images_dir(self) -> Path:
        if self.config.images_dir:
            return self.require(self.config.images_dir, "images", directory=True)
        return self.find(["Flicker8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset", "Flickr8k_Dataset", "images"],
                         "images folder", directory=True)

    def _captions(self, karpathy: dict | None) -> dict[tuple[str, int], str]:
        """(image file name, k) -> caption, from Flickr8k.token.txt, else from Karpathy's sentence order."""
        token = self.root / "Flickr8k_text" / "Flickr8k.token.txt"
        caps: dict[tuple[str, int], str] = {}
        if token.is_file():
            for n, line in enumerate(self.read_lines(token), 1):
                key, _, text = line.partition("\t")
                image, _, k = key.partition("#")
                if not text or not k.isdigit():
                    raise self.error(f"{token} line {n} is not '<image>.jpg#<k><TAB><caption>': {line!r}")
                if image.endswith(".jpg"):  # the corpus has stray '<image>.jpg.1' keys; everyone drops them
                    caps[(image, int(k))] = text.strip()
            return caps
        if karpathy is None:
            raise self.error("no captions: need Flickr8k_text/Flickr8k.token.txt or dataset_flickr8k.json")
        for img in karpathy["images"]:
            for k, sent in enumerate(img.get("sentences", [])):
                caps[(img["filename"], k)] = sent.get("raw") or " ".join(sent.get("tokens", []))
        return caps

    def _splits(self, karpathy: dict | None) -> dict[str, str]:
        if karpathy is not None:
            return {img["filename"]: img["split"] for img in karpathy["images"]}
        out = {}
        for split, name in (("train", "trainImages"), ("val", "devImages"), ("test", "testImages")):
            path = self.root / "Flickr8k_text" / f"Flickr_8k.{name}.txt"
            if path.is_file():
                out.update({line: split for line in self.read_lines(path)})
        return out

    def _check_karpathy(self, doc: object, path: Path) -> dict:
        images = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(images, list):
            raise self.error(f"{path} has no 'images' list")
        for i, img in enumerate(images):
            ok = (isinstance(img, dict) and isinstance(img.get("filename"), str) and isinstance(img.get("split"), str)
                  and isinstance(img.get("sentences", []), list)
                  and all(isinstance(x, dict) for x in img.get("sentences", [])))
            if not ok:
                raise self.error(f"{path}: images[{i}] is not {{filename, split, sentences: [{{raw, tokens}}]}}: "
                                 f"{str(img)[:120]}")
        return doc

    def _wavs(self, audio: Path) -> list[tuple[str, str, int]]:
        """(wav file name, image file name, k) for every spoken caption."""
        index = audio / "wav2capt.txt"
        if index.is_file():
            rows = []
            for n, line in enumerate(self.read_lines(index), 1):
                parts = line.split()
                if len(parts) != 3 or not parts[2].lstrip("#").isdigit():
                    raise self.error(f"{index} line {n} is not '<wav> <image>.jpg #<k>': {line!r}")
                rows.append((parts[0], parts[1], int(parts[2].lstrip("#"))))
            return rows
        rows = []
        for p in sorted(self.require("wavs", "spoken captions", directory=True, base=audio).glob("*.wav")):
            stem, _, k = p.stem.rpartition("_")
            if stem and k.isdigit():
                rows.append((p.name, f"{stem}.jpg", int(k)))
        return rows

    def manifest(self) -> Manifest:
        self.prepare()
        audio = self.require("flickr_audio", "audio", directory=True)
        wavs_dir = self.require("wavs", "spoken captions", directory=True, base=audio)
        images = self._images_dir()
        kpath = next((p for p in (self.root / "dataset_flickr8k.json", self.root / "Flickr8k_text" / "dataset_flickr8k.json")
                      if p.is_file()), None)
        karpathy = self._check_karpathy(self.read_json(kpath), kpath) if kpath else None
        captions, splits = self._captions(karpathy), self._splits(karpathy)
        clips = []
        for wav, image, k in self._wavs(audio):
            what = f"spoken caption '{wav}'"
            clips.append(Clip(
                clip_id=Path(wav).stem, group=Path(image).stem, split=splits.get(image),
                text=(captions[(image, k)],) if (image, k) in captions else (),
                media={"audio": self.under(wav, what, wavs_dir).absolute(),
                       "image": self.under(image, what, images).absolute()}))
        if not clips:
            raise self.error(f"no <image>_<k>.wav files in {wavs_dir}")
        clips = self.check_media(clips, self.config.skip_missing)
        return Manifest(self.dataset_name, self.root, clips)
