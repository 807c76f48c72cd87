"""`pipeline embed`: a trained run's embeddings of new images (a folder), sounds or spoken captions (a folder) and
sentences (a text file, one per line), written to stores, as the DSVE-loc seed's feature-extraction scripts offer.
Every input goes through `pipeline.query.RunQueries`: the run's own extractor chain, params and weights, then its
branch; `pipeline serve` embeds its queries with the same code."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .cache import hash_key
from .query import AUDIO_SUFFIXES, IMAGE_SUFFIXES, QueryError, RunQueries

log = logging.getLogger(__name__)

EmbedError = QueryError  # the name callers of `pipeline embed` know
BATCH = 16  # files decoded and embedded at once


def _write(path: Path, queries: RunQueries, modality: str, ids: list[str], emb: np.ndarray, source: str,
           backend: str) -> Path:
    from .training.run import write_rows_store

    info = queries.info
    write_rows_store(path, emb, ids, [hash_key([source, cid]) for cid in ids],
                     {"key": info["key"], "stage": info["stage"], "dataset": None, "extractor": info["implementation"],
                      "modality": modality, "params": info["params"], "model": str(queries.run_dir), "source": source},
                     backend, hash_key([info["key"], modality, source]), "input (file name or line number)")
    return path


def _run(run_dir: Path | RunQueries, device: str) -> RunQueries:
    return run_dir if isinstance(run_dir, RunQueries) else RunQueries(Path(run_dir), device=device)


def embed_texts(run_dir: Path | RunQueries, texts: Path, out: Path, backend: str = "zarr") -> Path:
    """Embed each line of `texts` with the run's text branch; the store's ids are line numbers (from 1)."""
    queries = _run(run_dir, "cpu")
    lines = [x.rstrip("\n") for x in texts.read_text(encoding="utf-8").splitlines()]
    if not lines:
        raise EmbedError(f"{texts} has no lines to embed")
    emb = queries.texts(lines)
    return _write(out / "text", queries, "text", [str(i + 1) for i in range(len(lines))], emb, str(texts), backend)


def _files(queries: RunQueries, kind: str, folder: Path, suffixes: tuple[str, ...], out: Path, backend: str) -> Path:
    """Embed every file of `folder` with one of `suffixes` (sorted by name) as queries of `kind`."""
    modality = queries.check(kind)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes) if folder.is_dir() else []
    if not files:
        raise EmbedError(f"{folder} holds no {kind} files ({', '.join(suffixes)})")
    emb = np.concatenate([queries.embed(kind, files[a:a + BATCH]) for a in range(0, len(files), BATCH)])
    return _write(out / modality, queries, modality, [p.name for p in files], emb, str(folder), backend)


def embed_images(run_dir: Path | RunQueries, folder: Path, out: Path, backend: str = "zarr",
                 device: str = "auto") -> Path:
    """Embed every image file in `folder` (sorted by name): the run's image extractor, then its image branch."""
    return _files(_run(run_dir, device), "image", folder, IMAGE_SUFFIXES, out, backend)


def embed_sounds(run_dir: Path | RunQueries, folder: Path, out: Path, backend: str = "zarr",
                 device: str = "auto") -> Path:
    """Embed every sound file in `folder` (sorted by name): the run's audio stages, then its audio branch."""
    return _files(_run(run_dir, device), "audio", folder, AUDIO_SUFFIXES, out, backend)

