"""`pipeline embed`: a trained run's embeddings of new images (a folder) and sentences (a text file, one per line),
written to a store, as the DSVE-loc seed's feature-extraction scripts offer. Images go through the same extractor,
with the same params and weights, as the run's image view did."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .cache import hash_key

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class EmbedError(RuntimeError):
    """The run or the inputs cannot be embedded; the message says what to do."""


def _write(path: Path, run_dir: Path, info: dict[str, Any], modality: str, ids: list[str], emb: np.ndarray,
           source: str, backend: str) -> Path:
    from .training.run import write_rows_store

    write_rows_store(path, emb, ids, [hash_key([source, cid]) for cid in ids],
                     {"key": info["key"], "stage": info["stage"], "dataset": None, "extractor": info["implementation"],
                      "modality": modality, "params": info["params"], "model": str(run_dir), "source": source},
                     backend, hash_key([info["key"], modality, source]), "input (file name or line number)")
    return path


def embed_texts(run_dir: Path, texts: Path, out: Path, backend: str = "zarr") -> Path:
    """Embed each line of `texts` with the run's text branch; the store's ids are line numbers (from 1)."""
    from models.common.base import EmbedsText

    from .training.run import load_trainer

    info = yaml.safe_load((run_dir / "params.yaml").read_text())
    trainer = load_trainer(run_dir)
    if not isinstance(trainer, EmbedsText):
        raise EmbedError(f"{info['implementation']} runs embed no written text")
    lines = [x.rstrip("\n") for x in texts.read_text(encoding="utf-8").splitlines()]
    if not lines:
        raise EmbedError(f"{texts} has no lines to embed")
    emb = trainer.text_embeddings(lines)
    return _write(out / "text", run_dir, info, "text", [str(i + 1) for i in range(len(lines))], emb, str(texts), backend)


def embed_images(run_dir: Path, folder: Path, out: Path, backend: str = "zarr", device: str = "auto") -> Path:
    """Embed every image file in `folder` (sorted by name): the run's image extractor, then its image branch."""
    from models.common.base import EmbedsImages
    from models.common.items import Items

    from .config import ExecutionParams
    from .datasets import Clip
    from .registry import EXTRACTORS
    from .store import clip_mean
    from .training.run import load_trainer

    info = yaml.safe_load((run_dir / "params.yaml").read_text())
    view = next(((v, s) for v, s in (info.get("upstream") or {}).items() if v == "image"), None)
    if view is None:
        raise EmbedError(f"run {run_dir} has no image view to embed pictures with")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise EmbedError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    stage = view[1]
    ext_cls = EXTRACTORS.get(stage["implementation"])
    extractor = ext_cls(ext_cls.Config(**(stage.get("params") or {})), ExecutionParams(device=device))
    trainer = load_trainer(run_dir)
    if not isinstance(trainer, EmbedsImages):
        raise EmbedError(f"{info['implementation']} runs embed no pictures on their own")
    ids = [p.name for p in files]
    tuned = trainer.trunk_live  # a fine-tuned trunk: the run's own, not the stage's weights
    maps, emb_parts = [], []
    for a in range(0, len(files), 16):
        loaded = [extractor.load(Clip(p.name, {"image": p.resolve()})) for p in files[a:a + 16]]
        if tuned:
            emb_parts.append(trainer.picture_embeddings(np.stack([x[len(x) // 2] for x in loaded])))
        else:
            maps.extend(clip_mean(rows).reshape(rows.shape[1:]) for rows in extractor.compute(loaded))
    extractor.release()
    if tuned:
        emb = np.concatenate(emb_parts)
    else:
        items = Items(ids, {"image": np.stack(maps).astype(np.float32)}, frozenset({"image"}), groups=ids,
                      group_of=np.arange(len(ids)))
        emb = trainer.image_embeddings(items, np.arange(len(ids)))
    return _write(out / "image", run_dir, info, "image", ids, emb, str(folder), backend)
