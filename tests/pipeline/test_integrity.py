"""Stores that never lie: each kind of damage is named by `status`, refused by readers, and recomputed by the
next run (only the damaged shards), which then equals a clean run clip for clip."""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline
from pipeline.config import load_config
from pipeline.runner import RunEvents, run, status
from pipeline.store import StoreError

from ..conftest import TINY, cli, write_config


def _config(tmp_path: Path, cache: Path, root: Path, backend: str) -> Path:
    return write_config(tmp_path / "stages.yaml", cache, {"tiny": {"adapter": "synthetic", "root": str(root),
                                                                    "params": TINY}}, backend=backend)


@pytest.fixture(scope="module")
def clean_caches(tmp_path_factory, tiny_synthetic_root):
    """One clean extract per backend (audio + logmel, 3 shards of 2 clips each), made on first use."""
    made: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}

    def get(backend: str) -> tuple[Path, dict[str, np.ndarray]]:
        if backend not in made:
            base = tmp_path_factory.mktemp(f"clean-{backend}")
            cfg = _config(base, base / "cache", tiny_synthetic_root, backend)
            run("extract", config=cfg)
            store = pipeline.open_store(dataset="tiny", stage="logmel", config=cfg)
            made[backend] = (base / "cache", {cid: store[cid] for cid in store.clip_ids})
        return made[backend]
    return get


@pytest.fixture
def copy_of(clean_caches, tmp_path, tiny_synthetic_root):
    """A private copy of a clean cache: (stages.yaml, logmel store, victim shard id, its record, reference)."""
    def make(backend: str = "zarr") -> tuple[Path, Path, str, dict, dict[str, np.ndarray]]:
        clean, reference = clean_caches(backend)
        cache = tmp_path / "cache"
        shutil.copytree(clean, cache)  # copy2: sizes and mtimes as committed
        cfg = _config(tmp_path, cache, tiny_synthetic_root, backend)
        store = _logmel_store(cache)
        return (cfg, store, *_victim(store), reference)
    return make


def _logmel_store(cache: Path) -> Path:
    return next((cache / "stores").glob("logmel-*"))


def _victim(store: Path) -> tuple[str, dict]:
    """The first shard's id and commit record."""
    commit = sorted((store / "commits").glob("*.json"))[0]
    return commit.stem, json.loads(commit.read_text())


def _chunk(store: Path, rec: dict) -> Path:
    return store / "shards" / rec["file"] / "data" / "c" / "0" / "0" / "0"


def _garble(path: Path) -> None:
    """Flip bytes in the middle of a file, keeping its size."""
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    b[mid:mid + 16] = bytes(x ^ 0xFF for x in b[mid:mid + 16])
    path.write_bytes(bytes(b))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _edit_commit(store: Path, rec: dict) -> None:
    rec["clips"][0]["stop"] += 1  # still valid JSON: a reader trusting it would return a wrong row range
    rec["clips"][1]["start"] += 1
    (store / "commits" / f"{rec['shard']}.json").write_text(json.dumps(rec))


def _rewrite(store: Path, rec: dict, old: bytes, new: bytes, last: bool = False) -> None:
    path = store / "commits" / f"{rec['shard']}.json"
    raw = path.read_bytes()
    at = raw.rfind(old) if last else raw.find(old)
    path.write_bytes(raw[:at] + new + raw[at + len(old):])


# name: (backend, damage(store, record), a word status must say, shards recomputed)
DAMAGE = {
    "chunk deleted": ("zarr", lambda s, r: _chunk(s, r).unlink(), "missing", 1),
    "chunk truncated": ("zarr", lambda s, r: _truncate(_chunk(s, r)), "truncated", 1),
    "chunk garbled": ("zarr", lambda s, r: _garble(_chunk(s, r)), "modified", 1),
    "shard folder deleted": ("zarr", lambda s, r: shutil.rmtree(s / "shards" / r["file"]), "missing", 1),
    "metadata garbled": ("zarr", lambda s, r: _garble(s / "shards" / r["file"] / "data" / "zarr.json"),
                         "modified", 1),
    "commit garbled": ("zarr", lambda s, r: (s / "commits" / f"{r['shard']}.json").write_text('{"shard": [garb'),
                       "unreadable", 1),
    "commit edited": ("zarr", _edit_commit, "altered", 1),
    "commit claims format 1": ("zarr", lambda s, r: _rewrite(s, r, b'"format": 2', b'"format": 1'), "altered", 1),
    "commit with fields appended": ("zarr", lambda s, r: _rewrite(s, r, b'"}', b'", "clips": []}', last=True),
                                    "altered", 1),
    "hdf5 truncated": ("hdf5", lambda s, r: _truncate(s / "shards" / r["file"]), "truncated", 1),
    "hdf5 garbled": ("hdf5", lambda s, r: _garble(s / "shards" / r["file"]), "modified", 1),
    "attrs.json deleted": ("zarr", lambda s, r: (s / "attrs.json").unlink(), "attrs.json is missing", 0),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_named_refused_and_recomputed(kind, copy_of):
    backend, damage, word, n_shards = DAMAGE[kind]
    cfg, store, sid, rec, reference = copy_of(backend)
    damage(store, rec)

    rows = {r["stage"]: r["state"] for r in status(load_config(cfg), None)}
    assert rows["audio"] == "up to date"
    assert rows["logmel"].startswith("damaged") and word in rows["logmel"], rows["logmel"]
    assert (sid in rows["logmel"]) == (n_shards == 1)
    with pytest.raises(StoreError, match=sid if n_shards else "attrs.json") as refused:
        pipeline.open_store(dataset="tiny", stage="logmel", config=cfg)
    assert "pipeline run extract --dataset tiny --stage logmel" in str(refused.value) or not n_shards

    notes: list[str] = []
    events = RunEvents()
    events.notice = notes.append
    audio, logmel = run("extract", config=cfg, events=events)
    assert audio.computed == 0
    assert (logmel.computed, logmel.reused) == (2 * n_shards, 6 - 2 * n_shards)
    assert any(word in n for n in notes), notes
    healed = pipeline.open_store(dataset="tiny", stage="logmel", config=cfg)
    assert healed.clip_ids == list(reference)
    for cid, arr in reference.items():
        np.testing.assert_array_equal(healed[cid], arr)
    assert [r["state"] for r in status(load_config(cfg), None)] == ["up to date"] * 2


def test_verify_finds_what_the_cheap_check_cannot_see(copy_of):
    cfg, store, sid, rec, reference = copy_of()
    chunk = _chunk(store, rec)
    st = chunk.stat()
    _garble(chunk)
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: same size, same mtime
    assert [r["state"] for r in status(load_config(cfg), None)] == ["up to date"] * 2  # by design: stat only
    opened = pipeline.open_store(dataset="tiny", stage="logmel", config=cfg)
    rows = pipeline.runner.resolve(load_config(cfg), None).rows["logmel"]
    item = next(c for c, k in rows.items() if k == rec["clips"][0]["key"])  # an item that reads the shard's first row
    with pytest.raises(StoreError, match=f"shard {sid} .* was modified"):  # the first read hashes the shard
        opened[item]
    with pytest.raises(StoreError, match="modified"):
        opened.to_dask().compute()

    proc = cli("verify", "--config", str(cfg), check=False)
    assert proc.returncode == 1 and "logmel: 1 of 3 shard(s) damaged" in proc.stdout and sid in proc.stdout
    assert "audio: 3 shard(s) verified" in proc.stdout and "pipeline run extract --dataset tiny" in proc.stderr
    assert "damaged 1 shard" in {r["stage"]: r["state"] for r in status(load_config(cfg), None)}["logmel"]
    assert run("extract", config=cfg)[1].computed == 2
    assert cli("verify", "--config", str(cfg)).returncode == 0
    healed = pipeline.open_store(dataset="tiny", stage="logmel", config=cfg)
    for cid, arr in reference.items():
        np.testing.assert_array_equal(healed[cid], arr)


def test_format_1_records_get_digests_without_recomputing(copy_of):
    cfg, store, _, _, _ = copy_of()
    for p in (store / "commits").glob("*.json"):  # as a store committed before format 2 has them
        rec = json.loads(p.read_text())
        p.write_text(json.dumps({k: rec[k] for k in ("shard", "file", "created", "clips", "failed")}))
    notes: list[str] = []
    events = RunEvents()
    events.notice = notes.append
    assert run("extract", config=cfg, events=events)[1].computed == 0
    assert any("recorded digests for 3 shard(s)" in n for n in notes), notes
    assert all(json.loads(p.read_text())["format"] == 2 for p in (store / "commits").glob("*.json"))
    _garble(_chunk(store, _victim(store)[1]))  # and from now on damage is seen
    assert "damaged 1 shard" in {r["stage"]: r["state"] for r in status(load_config(cfg), None)}["logmel"]


def test_cli_says_what_it_recomputes(copy_of):
    cfg, store, sid, rec, _ = copy_of()
    _chunk(store, rec).unlink()
    out = cli("status", "--config", str(cfg)).stdout
    assert f"logmel  damaged 1 shard: shard {sid}: {rec['file']}/data/c/0/0/0 is missing" in out
    proc = cli("run", "extract", "--config", str(cfg), "--no-progress")
    assert f"recomputing 1 damaged shard of logmel: shard {sid}" in proc.stderr
    assert "logmel: computed 2 clips in 1 shards, reused 4" in proc.stdout


def test_a_copy_that_lost_mtimes_is_trusted_by_content_and_its_mtimes_recorded(copy_of):
    from pipeline.store import scan_store

    cfg, store, _, _, reference = copy_of()
    for p in (store / "shards").rglob("*"):
        if p.is_file():
            os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    scan = scan_store(store)
    assert not scan.is_damaged and len(scan.moved) == 3
    assert run("extract", config=cfg)[1].computed == 0
    assert scan_store(store).moved == []  # recorded: the cheap check no longer hashes them
    healed = pipeline.open_store(dataset="tiny", stage="logmel", config=cfg)
    for cid, arr in reference.items():
        np.testing.assert_array_equal(healed[cid], arr)


def test_a_mark_applies_only_to_the_record_verify_checked(copy_of):
    from pipeline.store import StoreWriter, scan_store

    _, store, sid, rec, _ = copy_of()
    StoreWriter(store).mark_damaged(sid, "from an older record", "0" * 32)  # the shard was recomputed since
    assert not scan_store(store).is_damaged
    StoreWriter(store).mark_damaged(sid, "digest differs", rec["checksum"])
    assert scan_store(store).damaged == {sid: "digest differs"}


def test_an_unreadable_file_is_an_error_not_damage(copy_of, monkeypatch):
    from pipeline.store import scan_store

    _, store, sid, rec, _ = copy_of()
    real = os.stat

    def denied(path, *a, **kw):
        if str(path).endswith("data/c/0/0/0"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "stat", denied)
    with pytest.raises(StoreError, match="cannot check .*Permission denied"):
        scan_store(store)  # a run must stop here, not throw the shard away as damaged


def test_a_deleted_commit_record_is_reported_refused_and_recomputed(copy_of):
    """The record of a shard is deleted: opening the dataset's store refuses the partial store naming the command,
    verify names the orphaned shard file (rc 1), and the next run removes it and recomputes its clips."""
    cfg, store, sid, rec, reference = copy_of()
    (store / "commits" / f"{sid}.json").unlink()
    with pytest.raises(StoreError, match="holds 4 of 6 clips of dataset 'tiny'; run `pipeline run extract "
                                            "--dataset tiny --stage logmel` first"):
        pipeline.open_store(dataset="tiny", stage="logmel", config=cfg)
    assert len(pipeline.open_store(store).clip_ids) == 4  # by path: what is there, knowingly
    proc = cli("verify", "--config", str(cfg), check=False)
    assert proc.returncode == 1 and f"orphan {rec['file']}: a shard file that no commit record names" in proc.stdout
    assert run("extract", config=cfg)[1].computed == 2
    assert not (store / "shards" / rec["file"]).exists() or (store / "commits" / f"{sid}.json").exists()
    assert cli("verify", "--config", str(cfg)).returncode == 0
    healed = pipeline.open_store(dataset="tiny", stage="logmel", config=cfg)
    assert all(np.array_equal(healed[cid], arr) for cid, arr in reference.items())


def test_verify_reports_a_missing_attrs_file(copy_of):
    cfg, store, _, _, _ = copy_of()
    (store / "attrs.json").unlink()
    proc = cli("verify", "--config", str(cfg), check=False)
    assert proc.returncode == 1 and "logmel: damaged:" in proc.stdout and "attrs.json:" in proc.stdout, proc.stdout
    run("extract", config=cfg)
    assert (store / "attrs.json").exists() and cli("verify", "--config", str(cfg)).returncode == 0


def test_verify_on_a_read_only_cache_does_not_claim_a_mark_it_could_not_write(copy_of):
    from .test_runner import _read_only

    cfg, store, sid, rec, _ = copy_of()
    chunk = _chunk(store, rec)
    st = chunk.stat()
    _garble(chunk)
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = _read_only(store.parent.parent.parent, sys.executable, "-m", "pipeline.cli", "verify", "--config", str(cfg))
    assert proc.returncode == 1 and "NOT marked for recomputation" in proc.stdout, (proc.stdout, proc.stderr)
    assert "marked for recomputation:" not in proc.stdout.replace("NOT marked for recomputation", "")
    assert not (store / "damaged").exists()
    proc = cli("verify", "--config", str(cfg), check=False)  # writable again: now it marks
    assert proc.returncode == 1 and "1 of 3 shard(s) damaged, marked for recomputation" in proc.stdout
    assert (store / "damaged" / f"{sid}.json").exists()
