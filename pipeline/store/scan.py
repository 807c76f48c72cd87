"""The cheap check of a store (`scan_store`, on every open and every run): its records parsed and checked, each
listed file stat-ed; what the store holds for a set of row keys; its orphaned shard files."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import _shard_suffixes
from .records import _file_problem, _is_legacy, _record_problem, _unreachable, read_attrs


@dataclass
class StoreScan:
    """What a store's commit records say, checked: trusted records, damaged shards, legacy records."""

    path: Path
    attrs: dict[str, Any] | None
    attrs_problem: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)  # trusted, oldest first
    damaged: dict[str, str] = field(default_factory=dict)  # shard id -> what is wrong
    legacy: list[str] = field(default_factory=list)  # trusted format-1 shard ids (no digests to check)
    moved: list[str] = field(default_factory=list)  # trusted shards whose files' mtimes moved (a copy)

    def current(self, clip_keys: dict[str, str] | None) -> tuple[dict[str, tuple[dict, dict]], dict[str, tuple[dict, dict]]]:
        """Clip id -> (record, entry) of the newest computed and failed entry whose key is the clip's (`clip_keys`:
        clip id -> row key; many clips may share one row); without `clip_keys`, the newest entry per entry id. A
        clip is in at most one of the two."""
        ok: dict[str, tuple[dict, dict]] = {}
        failed: dict[str, tuple[dict, dict]] = {}
        for rec in self.records:  # oldest first: a newer entry for the same key wins
            for c in rec["clips"]:
                k = c["id"] if clip_keys is None else c["key"]
                ok[k] = (rec, c)
                failed.pop(k, None)
            for f in rec["failed"]:
                k = f["id"] if clip_keys is None else f["key"]
                failed[k] = (rec, f)
                ok.pop(k, None)
        if clip_keys is None:
            return ok, failed
        return ({cid: ok[k] for cid, k in clip_keys.items() if k in ok},
                {cid: failed[k] for cid, k in clip_keys.items() if k in failed})

    def describe_damage(self, limit: int = 3) -> str:
        """The damage in one line: attrs first, then up to `limit` shards."""
        parts = [self.attrs_problem] if self.attrs_problem else []
        parts += [f"shard {sid}: {why}" for sid, why in list(self.damaged.items())[:limit]]
        more = len(self.damaged) - limit
        return "; ".join(parts) + (f"; and {more} more damaged shard(s)" if more > 0 else "")

    @property
    def is_damaged(self) -> bool:
        return bool(self.attrs_problem or self.damaged)


def scan_store(path: str | os.PathLike, clip_keys: dict[str, str] | None = None) -> StoreScan:
    """Read and check a store's commit records (the cheap check). With `clip_keys`, only records that
    hold a current entry of some clip are checked against their files; an unreadable record always counts
    as damage, since nobody can tell what it held."""
    path = Path(path)
    attrs, problem = read_attrs(path)
    scan = StoreScan(path, attrs, problem if (path / "commits").is_dir() else None)
    key = attrs.get("key") if attrs else None
    commits = path / "commits"
    if not commits.is_dir():
        return scan
    marks: dict[str, dict[str, Any]] = {}  # shard id -> what `verify` found, for the record it checked
    if (path / "damaged").is_dir():
        for p in (path / "damaged").glob("*.json"):
            try:
                marks[p.stem] = json.loads(p.read_text())
            except (OSError, ValueError):
                marks[p.stem] = {"reason": "marked damaged", "checksum": None}
    records = []
    with os.scandir(commits) as it:
        entries = [e for e in it if e.name.endswith(".json") and not e.name.startswith(".")]
    for e in entries:
        sid = e.name[:-5]
        try:
            with open(e.path, "rb") as f:
                raw = f.read()
            rec = json.loads(raw)
        except FileNotFoundError:
            continue  # discarded by a run meanwhile
        except OSError as err:
            raise _unreachable(f"commit record {e.name} of {path}", err) from None
        except ValueError as err:
            scan.damaged[sid] = f"commit record is unreadable ({type(err).__name__})"
            continue
        why = _record_problem(rec, raw, sid, key)
        if why:
            scan.damaged[sid] = why
            continue
        mark = marks.get(sid)
        if isinstance(mark, dict) and mark.get("checksum") in (rec.get("checksum"), None):
            scan.damaged[sid] = str(mark.get("reason", "marked damaged"))
            continue
        records.append(rec)
    records.sort(key=lambda r: (r["created"], r["shard"]))
    relevant = records
    if clip_keys is not None:
        keys = set(clip_keys.values())
        relevant = [r for r in records if any(c["key"] in keys for c in r["clips"] + r["failed"])]
    shards = str(path / "shards")
    bad = set()
    for rec in relevant:
        if _is_legacy(rec):
            if not os.path.lexists(os.path.join(shards, rec["file"])):
                bad.add(rec["shard"])
                scan.damaged[rec["shard"]] = f"shard {rec['file']} is missing"
            else:
                scan.legacy.append(rec["shard"])
            continue
        why, moved = _file_problem(os.path.join(shards, rec["file"]), rec["files"])
        if why:
            bad.add(rec["shard"])
            scan.damaged[rec["shard"]] = why
        elif moved:
            scan.moved.append(rec["shard"])
    scan.records = [r for r in records if r["shard"] not in bad]
    return scan


def repair_command(attrs: dict[str, Any] | None, path: Path, dataset: str | None = None) -> str:
    """The command that recomputes a store's damaged shards for `dataset` (a shared store names none itself: then
    the command of any dataset that reads it), or, for a store that names no stage, what to do."""
    dataset = dataset or (attrs or {}).get("dataset")
    if attrs and attrs.get("stage"):
        which = f"--dataset {dataset}" if dataset else "--dataset D (any dataset that reads it)"
        return f"`pipeline run {attrs.get('group', 'extract')} {which} --stage {attrs['stage']}`"
    return f"a run of the stage that made {path}"


def _orphans(path: Path) -> list[Path]:
    """Shard files that no commit record names (a deleted record, or a writer killed between its rename and its
    commit): their clips are not in the store."""
    suffixes = _shard_suffixes()
    shards = sorted((path / "shards").glob("*")) if (path / "shards").is_dir() else []
    return [p for p in shards if not p.name.startswith(".tmp-") and p.suffix in suffixes
            and not (path / "commits" / f"{p.name[:-len(p.suffix)]}.json").exists()]
