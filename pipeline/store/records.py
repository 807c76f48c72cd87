"""The on-disk format: attrs.json, and the commit records that say what each shard must hold, sealed by a checksum
of their own text, with the checks of a record and of its shard's files against it."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .backends import _shard_suffixes
from .files import StoreError, array_digest, file_digest

ATTRS_FILE = "attrs.json"
FORMAT_VERSION = 2  # 2: commit records carry integrity data and a checksum (1: neither)
_SELF = "."  # the files-table name of a shard that is a single file (HDF5)


_CHECKSUM = ', "checksum": "'


def _record_text(record: dict[str, Any]) -> str:
    """A commit record as stored: its JSON, with the checksum of that very text added as the last field
    (checking it later needs no re-serialisation, only a hash of the bytes before it)."""
    body = json.dumps({k: v for k, v in record.items() if k != "checksum"})
    digest = hashlib.sha256(body.encode()).hexdigest()[:32]
    record["checksum"] = digest
    return f'{body[:-1]}{_CHECKSUM}{digest}"}}'


def _checksum_matches(raw: bytes, checksum: Any) -> bool:
    """The record's text up to its checksum hashes to it, and nothing follows it (no appended fields)."""
    if not isinstance(checksum, str):
        return False
    cut = raw.rfind(_CHECKSUM.encode())
    return (cut > 0 and raw[cut:].rstrip() == f'{_CHECKSUM}{checksum}"}}'.encode()
            and hashlib.sha256(raw[:cut] + b"}").hexdigest()[:32] == checksum)


def _shard_files(shard: Path) -> dict[str, Path]:
    """Every file of a shard by its name inside the shard (a single-file shard is `.`)."""
    if not shard.is_dir():
        return {_SELF: shard}
    return {p.relative_to(shard).as_posix(): p for p in sorted(shard.rglob("*")) if p.is_file()}


def _file_table(shard: Path) -> dict[str, list[Any]]:
    """name -> [size, mtime_ns, digest] for every file of a shard, as a commit record stores them."""
    table = {}
    for name, p in _shard_files(shard).items():
        st = p.stat()
        table[name] = [st.st_size, st.st_mtime_ns, file_digest(p)]
    return table


def _integrity(shard: Path, data: np.ndarray, offsets: np.ndarray) -> dict[str, Any]:
    return {"arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str, "digest": array_digest(a)}
                       for name, a in (("data", data), ("offsets", offsets))},
            "files": _file_table(shard)}


def read_attrs(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A store's attrs.json, or None and why it cannot be used."""
    try:
        attrs = json.loads((path / ATTRS_FILE).read_text())
    except FileNotFoundError:
        return None, f"{ATTRS_FILE} is missing"
    except (OSError, ValueError) as e:
        return None, f"{ATTRS_FILE} is unreadable ({type(e).__name__})"
    if not isinstance(attrs, dict) or "backend" not in attrs:
        return None, f"{ATTRS_FILE} is not a store's attrs"
    return attrs, None


def _is_legacy(rec: dict[str, Any]) -> bool:
    """A format-1 record: written before records carried integrity data (and nothing claims otherwise)."""
    return rec.get("format", 1) == 1 and not {"checksum", "files", "arrays"} & rec.keys()


def _shard_files_ok(rec: dict[str, Any]) -> bool:
    if rec["file"] not in {f"{rec['shard']}{x}" for x in _shard_suffixes()}:  # never a path out of shards/
        return False
    if _is_legacy(rec):
        return True
    files = rec["files"]
    return isinstance(files, dict) and bool(files) and all(
        isinstance(name, str) and not name.startswith("/") and ".." not in name.split("/")
        and isinstance(v, list) and len(v) == 3 and isinstance(v[0], int) and isinstance(v[1], int)
        and isinstance(v[2], str) for name, v in files.items())


def _record_problem(rec: Any, raw: bytes, shard_id: str, store_key: str | None) -> str | None:
    """Why a commit record (parsed, and its bytes) cannot be trusted, or None."""
    if not isinstance(rec, dict):
        return "commit record is not a JSON object"
    try:
        if not _is_legacy(rec) and (rec.get("format") != FORMAT_VERSION
                                    or not _checksum_matches(raw, rec.get("checksum"))):
            return "commit record was altered after it was written (its checksum does not match)"
        if rec["shard"] != shard_id:
            return f"commit record names shard {rec['shard']}, not {shard_id}"
        if store_key and rec.get("store_key") not in (None, store_key):
            return f"commit record belongs to store {rec['store_key']}, not {store_key}"
        if not isinstance(rec["created"], (int, float)) or not _shard_files_ok(rec):
            return "commit record is malformed (its shard file or file table)"
        stop = 0
        for c in rec["clips"]:
            if (not isinstance(c["id"], str) or not isinstance(c["key"], str) or not isinstance(c["start"], int)
                    or c["start"] != stop or not isinstance(c["stop"], int) or c["stop"] < c["start"]):
                return f"commit record's row ranges are inconsistent (clip {c['id']})"
            stop = c["stop"]
        for f in rec["failed"]:
            if not isinstance(f["id"], str) or not isinstance(f["key"], str) or not isinstance(f["reason"], str):
                return "commit record's failures are malformed"
        if not _is_legacy(rec):
            data, offsets = rec["arrays"]["data"], rec["arrays"]["offsets"]
            if data["shape"][0] != stop or offsets["shape"] != [len(rec["clips"]) + 1]:
                return (f"commit record is inconsistent: its clips span {stop} rows, its data holds "
                        f"{data['shape'][0]}")
    except (KeyError, TypeError, IndexError, AttributeError):
        return "commit record is incomplete (a field is missing or of the wrong type)"
    return None


def _unreachable(where: str, e: OSError) -> StoreError:
    """An error that says nothing about the data (permissions, I/O, too many open files): stop and say so,
    never count it as damage (damage is recomputed, and the shard's data is thrown away)."""
    return StoreError(f"cannot check {where}: {e.strerror or e}; fix access to the cache, then retry")


def _file_problem(shard: Path | str, files: dict[str, list[Any]], full: bool = False) -> tuple[str | None, bool]:
    """What is wrong with a shard's files against their committed table (None: they check out), and whether
    a file's mtime moved while its content did not. Cheap: present, same size, and a file whose mtime moved
    must still match its digest. `full`: every digest."""
    shard = str(shard)  # plain strings: this runs for every file of every shard on every open
    base = os.path.basename(shard)
    if not os.path.lexists(shard):
        return f"shard {base} is missing", False
    moved = False
    for name, (size, mtime_ns, digest) in files.items():
        p = shard if name == _SELF else os.path.join(shard, name)
        where = base if name == _SELF else f"{base}/{name}"
        try:
            st = os.stat(p)
        except (FileNotFoundError, NotADirectoryError):
            return f"{where} is missing", False
        except OSError as e:
            raise _unreachable(where, e) from None
        if st.st_size != size:
            how = "truncated" if st.st_size < size else "grown"
            return f"{where} is {how}: {st.st_size} bytes, {size} committed", False
        if full or st.st_mtime_ns != mtime_ns:
            try:
                same = file_digest(p) == digest
            except OSError as e:
                raise _unreachable(where, e) from None
            if not same:
                return f"{where} was modified: its content differs from what was committed", False
            moved = moved or st.st_mtime_ns != mtime_ns
    return None, moved
