"""Checks that hash: `verify_store` (the `pipeline verify` command: every file and every decoded array against its
digest, damaged shards marked for the next run), and the once-per-process hash of a shard before its first read."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import get_backend
from .files import StoreError, array_digest
from .records import _file_problem, _is_legacy
from .scan import _orphans, scan_store
from .writer import StoreWriter

log = logging.getLogger(__package__)  # the store's one logger: its messages keep the name they always had


@dataclass
class Verification:
    """What `verify_store` found: shards checked, damage (shard id, or `attrs.json`, or a shard file that no
    record names -> reason), and whether the damaged shards were marked for the next run."""

    checked: int
    damaged: dict[str, str]
    marked: bool = False
    unmarked_why: str | None = None



def verify_store(path: str | os.PathLike, clip_keys: dict[str, str] | None = None, mark: bool = True) -> Verification:
    """The full check: every file's digest and every array decoded against its digest, the attrs, and shard files
    that no commit record names (orphans: their clips are not in the store). With `mark`, damaged shards are
    marked for the next run."""
    path = Path(path)
    scan = scan_store(path, clip_keys)
    damaged = dict(scan.damaged)
    backend = get_backend(scan.attrs["backend"]) if scan.attrs else None
    checked = len(scan.records) + len(damaged)
    for rec in scan.records:
        if _is_legacy(rec) or backend is None:
            continue
        shard = scan.path / "shards" / rec["file"]
        why, _ = _file_problem(shard, rec["files"], full=True)
        if why is None:
            try:
                arrays = {"data": np.asarray(backend.open(shard)[...]), "offsets": backend.read_offsets(shard)}
                for name, a in arrays.items():
                    if array_digest(a) != rec["arrays"][name]["digest"]:
                        why = f"{name} decodes to other values than were committed"
                        break
            except (OSError, MemoryError) as e:
                if not isinstance(e, FileNotFoundError):
                    raise
                why = f"cannot be decoded ({e})"
            except Exception as e:  # any other decoder failure is damage to report, not a crash
                why = f"cannot be decoded ({type(e).__name__}: {e})"
        if why:
            damaged[rec["shard"]] = why
    to_mark = dict(damaged)
    if scan.attrs_problem:
        damaged["attrs.json"] = f"{scan.attrs_problem} (the next run rewrites it from the stage's definition)"
    for shard in _orphans(path):
        damaged[f"orphan {shard.name}"] = ("a shard file that no commit record names (its record was deleted, or "
                                           "a writer died before committing): its clips are not in the store; "
                                           "the next run removes it and recomputes them")
    result = Verification(checked, damaged)
    if mark and to_mark and scan.attrs is not None:
        try:
            writer = StoreWriter(scan.path)
            checksums = {r["shard"]: r.get("checksum") for r in scan.records}
            for sid, why in to_mark.items():
                if sid not in scan.damaged:  # what the cheap check finds, every scan finds again
                    writer.mark_damaged(sid, why, checksums.get(sid))
            result.marked = True
        except OSError as e:
            result.unmarked_why = str(e)
            log.warning("store %s: damaged shards not marked (%s): a run will not know to recompute them", path, e)
    return result


_VERIFIED: set[tuple[str, str]] = set()  # (shard path, record checksum) hashed in this process


def _verify_files(shard: Path, rec: dict[str, Any], hint: str) -> None:
    """Hash a shard's files once per process before its data is first returned."""
    if _is_legacy(rec) or (str(shard), rec["checksum"]) in _VERIFIED:
        return
    why, _ = _file_problem(shard, rec["files"], full=True)
    if why:
        raise StoreError(f"shard {rec['shard']} of store {shard.parent.parent} is damaged: {why}; run `pipeline "
                         f"verify` to mark it, then {hint} to recompute it")
    _VERIFIED.add((str(shard), rec["checksum"]))


def _checked_block(block: np.ndarray, shard: str = "", rec: dict[str, Any] | None = None, hint: str = "") -> np.ndarray:
    _verify_files(Path(shard), rec or {}, hint)
    return block
