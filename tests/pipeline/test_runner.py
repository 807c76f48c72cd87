"""End to end: extract on a tiny synthetic set, reuse, overrides, resume, concurrency, failures."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import pipeline
from pipeline.runner import PipelineError, RunEvents, collect_garbage, resolve, run, status

from ..conftest import TINY, cli, write_config


def _stores(cache, stage):
    return sorted((cache / "stores").glob(f"{stage}-*"))


def test_extract_end_to_end_then_reuse(project, tmp_path):
    reports = run("extract", config=project)
    assert [r.name for r in reports] == ["audio", "logmel"]
    assert all(r.computed == 6 and r.failed == 0 for r in reports)
    store = pipeline.open_store(dataset="tiny", stage="logmel", config=project)
    assert len(store) == 6 and store.attrs["params"] == {"preset": "vggish", "pad_short": False}
    x = store["class00/class00_000"]
    assert x.shape == (1, 96, 64) and x.dtype == np.float32 and np.isfinite(x).all()
    assert store.to_dask().shape == (6, 96, 64)
    assert store.attrs["frame_rate"] == pytest.approx(1 / 0.96)
    audio = pipeline.open_store(dataset="tiny", stage="audio", config=project)
    assert audio.attrs["sample_rate"] == 16000 and abs(audio["class01/class01_002"].size - 16000) <= 1024  # AAC frames
    by_path = pipeline.open_store(_stores(tmp_path / "cache", "audio")[0])  # a shared store: rows by their keys
    assert len(by_path) == 6 and all(np.array_equal(by_path[k], audio[c])
                                     for c, k in resolve(pipeline.config.load_config(project), None).rows["audio"].items())

    again = run("extract", config=project)
    assert all(r.computed == 0 and r.reused == 6 for r in again)
    assert [s["state"] for s in status(pipeline.config.load_config(project), None)] == ["up to date"] * 2


def test_features_separate_the_classes(project):
    run("extract", config=project)
    store = pipeline.open_store(dataset="tiny", stage="logmel", config=project)
    peak = {cid: int(np.argmax(store[cid].mean(axis=(0, 1)))) for cid in store.clip_ids}
    by_class = {}
    for cid, band in peak.items():
        by_class.setdefault(cid.split("/")[0], set()).add(band)
    # each class's tone lands in one mel band for all its clips, and classes differ
    assert all(len(bands) == 1 for bands in by_class.values()), by_class
    assert len({b for bands in by_class.values() for b in bands}) == len(by_class)


def test_override_makes_new_store_and_switching_back_reuses(project, tmp_path):
    run("extract", config=project)
    first = _stores(tmp_path / "cache", "logmel")
    rep = run("extract", config=project, overrides=["logmel.preset=davenet"])
    assert rep[0].computed == 0 and rep[1].computed == 6  # audio reused, new logmel store
    assert len(_stores(tmp_path / "cache", "logmel")) == 2
    d = pipeline.open_store(dataset="tiny", stage="logmel", config=project)
    assert d.attrs["params"]["preset"] == "vggish"  # stages.yaml itself is unchanged
    back = run("extract", config=project)
    assert back[1].computed == 0 and back[1].store_path == first[0]
    cfg = pipeline.config.load_config(project, ["logmel.preset=vgs"])
    assert status(cfg, None)[1]["state"].startswith("stale")


def test_folder_dataset_computes_only_new_clips(tmp_path, clip_factory):
    root = tmp_path / "vegas"
    for cls, f in [("dog", 300), ("drum", 900)]:
        for i in range(2):
            clip_factory(root / cls / f"{cls} {i}.mp4", freq=f + 10 * i)
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"v": {"adapter": "folder", "root": str(root), "params": {"n_folds": 2}}})
    assert run("extract", config=cfg)[1].computed == 4
    clip_factory(root / "dog" / "dog 9.mp4", freq=333)
    clip_factory(root / "chainsaw" / "saw.mp4", freq=1500)
    rows = status(pipeline.config.load_config(cfg), None)
    assert rows[0]["state"] == "partial 4 of 6 clips"
    reps = run("extract", config=cfg)
    assert [(r.computed, r.reused) for r in reps] == [(2, 4), (2, 4)]
    # a changed file gets a new content key: only it is recomputed
    clip_factory(root / "dog" / "dog 0.mp4", freq=1234, seconds=1.5)
    assert [r.computed for r in run("extract", config=cfg)] == [1, 1]
    assert abs(pipeline.open_store(dataset="v", stage="audio", config=cfg)["dog/dog 0"].size - 24000) <= 1024


def test_bad_media_recorded_and_run_completes(tmp_path, clip_factory):
    root = tmp_path / "v"
    good = clip_factory(root / "ok" / "good.mp4", seconds=2.0)
    clip_factory(root / "bad" / "silent.mp4", audio=False)
    (root / "bad" / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(3000))  # seeded: never a container
    (root / "bad" / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (root / "bad" / "gone.mp4").symlink_to(root / "nowhere.mp4")
    (root / "bad" / "loop.mp4").symlink_to(root / "bad" / "loop.mp4")
    clip_factory(root / "bad" / "empty.wav", seconds=0, video=False)
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"v": {"adapter": "folder", "root": str(root)}})
    reps = run("extract", config=cfg)
    reasons = {f["id"]: f["reason"].split(":")[0] for f in reps[0].failures}
    assert reasons == {"bad/silent": "no audio stream", "bad/garbage": "corrupt container",
                       "bad/cut": "truncated file", "bad/gone": "missing file", "bad/loop": "unreadable file",
                       "bad/empty": "zero duration"}
    assert reps[0].computed == 1 and reps[1].computed == 1
    assert {f["id"] for f in reps[1].failures} == set(reasons)
    assert all(f["reason"].startswith("upstream failed") for f in reps[1].failures)
    log = [json.loads(line) for line in (reps[0].failures_log).read_text().splitlines()]
    assert {x["id"] for x in log} == set(reasons)
    with pytest.raises(PipelineError, match="--strict"):
        run("extract", config=cfg, strict=True)
    proc = cli("run", "extract", "--config", str(cfg), "--strict", check=False)
    assert proc.returncode == 1 and "bad/garbage: corrupt container" in proc.stdout
    assert "error: 6 clip(s) failed and --strict is set" in proc.stderr  # clips, not clips x stages


def _big_config(tmp_path, cache):
    params = {**TINY, "n_classes": 4, "clips_per_class": 5}
    return write_config(tmp_path / "stages.yaml", cache,
                        {"big": {"adapter": "synthetic", "root": str(tmp_path / "big"), "params": params}},
                        stages={"audio": {"group": "extract", "implementation": "audio",
                                          "execution": {"shard_size": 1}}})


def _wait_for_commits(store_glob, n, proc, timeout=60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = [p for s in store_glob() for p in (s / "commits").glob("*.json")]
        if len(found) >= n:
            return len(found)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no commits appeared")


def test_sigkill_then_resume_recomputes_only_uncommitted(tmp_path):
    cfg = _big_config(tmp_path, tmp_path / "cache")
    run("extract", config=cfg, workers=1)  # generates the data; this is also the clean reference
    clean = pipeline.open_store(dataset="big", stage="audio", config=cfg)
    reference = {cid: clean[cid] for cid in clean.clip_ids}
    shutil.rmtree(tmp_path / "cache")

    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "extract", "--config", str(cfg),
                             "--workers", "1", "--no-progress"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    committed = _wait_for_commits(lambda: _stores(tmp_path / "cache", "audio"), 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed < 20
    store_dir = _stores(tmp_path / "cache", "audio")[0]
    n_commits = len(list((store_dir / "commits").glob("*.json")))
    out = cli("run", "extract", "--config", str(cfg), "--workers", "1", "--no-progress").stdout
    assert f"reusing {n_commits} clips from {n_commits} committed shards" in out
    assert f"computed {20 - n_commits} clips" in out
    resumed = pipeline.open_store(dataset="big", stage="audio", config=cfg)
    assert resumed.clip_ids == list(reference)
    for cid, arr in reference.items():
        np.testing.assert_array_equal(resumed[cid], arr)
    assert not list(store_dir.glob("shards/.tmp-*"))


def test_two_runs_at_once_on_one_cache(tmp_path):
    cfg = _big_config(tmp_path, tmp_path / "cache")
    pipeline.runner.make_adapter(pipeline.config.load_config(cfg), None).prepare()
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "extract", "--config", str(cfg), "--workers", "1",
           "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    store = pipeline.open_store(dataset="big", stage="audio", config=cfg)
    assert len(store) == 20 and not store.failures
    records = [json.loads(p.read_text()) for p in (store.path / "commits").glob("*.json")]
    rows = resolve(pipeline.config.load_config(cfg), "big").rows["audio"]
    assert sorted(c["key"] for r in records for c in r["clips"]) == sorted(set(rows.values()))  # each row once
    assert all(abs(store[c].size - 16000) <= 1024 for c in store.clip_ids)


def test_dask_executor_gives_same_store(project):
    ref = run("extract", config=project, stage="audio")[0]
    shutil.rmtree(ref.store_path)
    rep = run("extract", config=project, stage="audio", executor="dask", workers=2)[0]
    assert rep.computed == 6 and len(pipeline.open_store(rep.store_path)) == 6


def test_gc_removes_only_unreferenced(project, tmp_path):
    run("extract", config=project)
    run("extract", config=project, overrides=["logmel.preset=vgs"])
    cfg = pipeline.config.load_config(project)
    removed, _ = collect_garbage(cfg, dry_run=True)
    assert len(removed) == 1 and "logmel" in removed[0][0].name and removed[0][0].exists()
    collect_garbage(cfg)
    assert not removed[0][0].exists()
    assert all(r.computed == 0 for r in run("extract", config=project))


def test_hdf5_backend_end_to_end(project, tmp_path):
    cfg = pipeline.config.load_config(project)
    cfg.backend = "hdf5"
    reports = run("extract", config=cfg)
    assert all(r.computed == 6 for r in reports)
    assert list((reports[1].store_path / "shards").glob("*.h5"))
    store = pipeline.FeatureStore(reports[1].store_path, resolve(cfg, None).rows["logmel"])  # the items' rows
    assert store.attrs["backend"] == "hdf5" and store.to_dask().shape == (6, 96, 64)
    assert store["class01/class01_001"].shape == (1, 96, 64)


def test_dask_scheduler_address(project):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        rep = run("extract", config=project, stage="audio", scheduler=cluster.scheduler_address)[0]
    assert rep.computed == 6 and rep.failed == 0


def test_gc_never_removes_a_store_being_read(project, tmp_path):
    from pipeline.runner import in_use, resolve

    run("extract", config=project, overrides=["audio.sample_rate=8000"])
    cfg = pipeline.config.load_config(project)
    old_audio = [p for p in _stores(tmp_path / "cache", "audio")]
    assert len(old_audio) == 1
    with in_use(cfg.cache, old_audio[0]):  # e.g. a logmel run reading its upstream
        removed, skipped = collect_garbage(cfg)
        assert old_audio[0].exists() and any("in use" in s for s in skipped)
    removed, _ = collect_garbage(cfg)
    assert not old_audio[0].exists()
    assert resolve(cfg, None).stages["audio"].store_path != old_audio[0]


def test_upstream_with_no_successful_clip(tmp_path, clip_factory):
    for i in range(2):
        clip_factory(tmp_path / "v" / "mute" / f"{i}.mp4", audio=False)
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"v": {"adapter": "folder", "root": str(tmp_path / "v")}})
    reps = run("extract", config=cfg)
    assert [(r.computed, r.failed) for r in reps] == [(0, 2), (0, 2)]
    assert "no audio stream" in reps[1].failures[0]["reason"]


def test_backend_is_part_of_the_store_identity(project):
    cfg = pipeline.config.load_config(project)
    zarr_path = run("extract", config=cfg)[1].store_path
    cfg.backend = "hdf5"
    rep = run("extract", config=cfg)[1]
    assert rep.store_path != zarr_path and rep.computed == 6 and pipeline.open_store(rep.store_path).attrs["backend"] == "hdf5"


def test_workers_die_with_a_killed_parent(tmp_path):
    import psutil

    cfg = _big_config(tmp_path, tmp_path / "cache")
    pipeline.runner.make_adapter(pipeline.config.load_config(cfg), None).prepare()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "extract", "--config", str(cfg),
                             "--workers", "2", "--no-progress"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_commits(lambda: _stores(tmp_path / "cache", "audio"), 1, proc)
    workers = [c for c in psutil.Process(proc.pid).children() if "python" in c.name()]
    assert workers
    proc.kill()  # the main process only, not its group
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    os.killpg(proc.pid, signal.SIGKILL) if alive else None


def test_gc_between_stages_of_a_run_removes_nothing_of_it(tmp_path, tiny_synthetic_root):
    stages = {"audio": {"group": "extract", "implementation": "audio"},
              "logmel": {"group": "extract", "implementation": "logmel", "upstream": ["audio"]},
              "logmel-vgs": {"group": "extract", "implementation": "logmel", "upstream": ["audio"],
                             "params": {"preset": "vgs"}}}
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY}}, stages)
    gc_out: list[str] = []

    class Between(RunEvents):
        def plan(self, report, n_compute):
            if report.name == "logmel-vgs":  # logmel is done and nobody reads it now; the run is not over
                gc_out.append(cli("gc", "--config", str(cfg)).stdout)

    reps = run("extract", config=cfg, overrides=["audio.sample_rate=22050"], events=Between())
    assert len(gc_out) == 1 and "removed 0 store(s)" in gc_out[0]
    assert gc_out[0].count("in use by a running run") == 3, gc_out[0]
    assert all(r.computed == 6 for r in reps) and all(r.store_path.exists() for r in reps)
    assert len(pipeline.open_store(reps[1].store_path)) == 6
    after = cli("gc", "--config", str(cfg)).stdout  # the run is over: now they are garbage
    assert "removed 3 store(s)" in after and not any(r.store_path.exists() for r in reps)


def test_gc_leaves_datasets_the_config_does_not_name(project, tmp_path):
    run("extract", config=project)
    other = write_config(tmp_path / "other.yaml", tmp_path / "cache",
                         {"elsewhere": {"adapter": "synthetic", "root": str(tmp_path / "nowhere")}})
    out = cli("gc", "--config", str(other)).stdout
    assert "removed 0 store(s)" in out and "tiny" in out and "--all" in out
    assert "removed 2 store(s)" in cli("gc", "--all", "--config", str(other)).stdout


def test_progress_moves_per_shard(tmp_path):
    cfg = _big_config(tmp_path, tmp_path / "cache")
    seen: list[float] = []
    events = RunEvents()
    events.progress = lambda n: seen.append(time.time())
    rep = run("extract", config=cfg, workers=2, events=events)[0]
    assert len(seen) == 20
    created = sorted(json.loads(p.read_text())["created"] for p in (rep.store_path / "commits").glob("*.json"))
    assert seen[0] < created[-1]  # the first shard was counted before the last one was even committed


def test_sigint_stops_cleanly_and_the_rerun_resumes(tmp_path):
    cfg = _big_config(tmp_path, tmp_path / "cache")
    pipeline.runner.make_adapter(pipeline.config.load_config(cfg), None).prepare()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "extract", "--config", str(cfg),
                             "--workers", "2", "--no-progress"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_commits(lambda: _stores(tmp_path / "cache", "audio"), 1, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted; " in err and "shard(s) committed, rerun to resume" in err and "Traceback" not in err
    committed = int(err.split("interrupted; ")[1].split()[0])
    store_dir = _stores(tmp_path / "cache", "audio")[0]
    assert committed == len(list((store_dir / "commits").glob("*.json")))
    rep = run("extract", config=cfg)[0]
    assert rep.reused == committed and rep.computed == 20 - committed
    assert rep.failed == 0  # no clip in flight at Ctrl-C was recorded as a failure (its ffmpeg runs on)


@pytest.mark.parametrize("device, says", [("cuda:99", "CUDA"), ("tpu", "device 'tpu' is not one this pipeline runs on"),
                                          ("cuda:x", "use auto, cpu, cuda, cuda:N"), ("mps", "no MPS device")])
def test_a_device_that_is_not_here_is_refused_before_any_work(project, tmp_path, device, says):
    p = cli("run", "extract", "--config", str(project), "--device", device, check=False)
    assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "cache" / "stores").exists()


def test_folder_dataset_lists_what_it_skips(tmp_path, clip_factory):
    root = tmp_path / "v"
    clip_factory(root / "dog" / "bark.mp4")
    clip_factory(root / "drum" / "hit.mp4", freq=900)
    (root / "dog" / "x.mp4").mkdir()
    (root / "dog" / "notes.txt").write_text("not a clip")
    (root / "dog" / ".DS_Store").write_bytes(b"\0")
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache", {"v": {"adapter": "folder", "root": str(root)}},
                       stages={"audio": {"group": "extract", "implementation": "audio"}})
    p = cli("run", "extract", "--config", str(cfg), "--no-progress")
    assert ("dataset 'v': skipped 2 entries that are not media files: dog/notes.txt (not a media file type); "
            "dog/x.mp4 (a folder with a media file's name)") in p.stderr
    assert "audio: computed 2 clips" in p.stdout


_READ_ONLY = """
import os, subprocess, sys
cache = sys.argv[1]
subprocess.run(["mount", "--bind", cache, cache], check=True)
subprocess.run(["mount", "-o", "remount,ro,bind", cache], check=True)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _read_only(cache, *argv):
    """Run argv with `cache` mounted read-only (root: in a private user + mount namespace; others: chmod)."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
        try:
            return subprocess.run(list(argv), capture_output=True, text=True)
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(cache)], check=True)
    return subprocess.run(["unshare", "-rm", sys.executable, "-c", _READ_ONLY, str(cache), *argv],
                          capture_output=True, text=True)


def test_status_and_a_noop_run_work_on_a_read_only_cache(project, tmp_path):
    run("extract", config=project)
    cache = tmp_path / "cache"
    probe = _read_only(cache, sys.executable, "-c", f"open({str(cache / 'x')!r}, 'w')")
    assert probe.returncode != 0 and ("Read-only" in probe.stderr or "Permission" in probe.stderr)
    before = sorted(p for p in cache.rglob("*"))
    st = _read_only(cache, sys.executable, "-m", "pipeline.cli", "status", "--config", str(project))
    assert st.returncode == 0 and st.stdout.split() == ["audio", "up", "to", "date", "logmel", "up", "to", "date"], st
    rerun = _read_only(cache, sys.executable, "-m", "pipeline.cli", "run", "extract", "--config", str(project),
                       "--no-progress")
    assert rerun.returncode == 0 and "logmel: up to date, 6 clips reused" in rerun.stdout, rerun
    assert sorted(p for p in cache.rglob("*")) == before


def test_disk_full_names_the_stage_and_the_path(project, monkeypatch):
    import errno

    from pipeline.store import ZarrBackend

    run("extract", config=project, stage="audio")

    def full(self, path, data, offsets):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ZarrBackend, "write", full)
    with pytest.raises(PipelineError) as e:
        run("extract", config=project)  # workers: 1, so the shard is written in this process
    msg = str(e.value)
    assert msg.startswith("stage 'logmel': cannot write shard") and "the disk is full" in msg
    assert "stores/logmel-" in msg and msg.endswith("then rerun to resume")


def test_shards_are_sized_to_the_work():
    from pipeline.runner import shard_size_for

    # a VEGAS-size store (28k clips) is about a hundred shards (a few hundred files), not 3500
    assert 100 <= -(-28000 // shard_size_for(28000, 2)) <= 120
    assert shard_size_for(400, 2) == 50 and shard_size_for(60, 2) == 8  # four shards per worker, at least 8 clips
    # a clip of unpooled VGG16 conv maps (10 s at 1 fps: 3.8 MiB): a shard stays within 256 MiB in memory
    conv = {"dims": [14, 14, 512], "dtype": "float32", "frame_rate": 1.0}
    assert shard_size_for(28000, 2, conv) * 10 * 14 * 14 * 512 * 4 <= 256 << 20
    assert shard_size_for(28000, 2, {"dims": [2048], "dtype": "float32", "frame_rate": None}) == 256  # pooled


def _timed_audio() -> list[tuple[str, str]]:
    """The audio stage, registered as `timed_audio`, recording when each clip's decoding and each
    batch's compute start and end into the list returned."""
    from extractors.audio import AudioDemux
    from pipeline.registry import EXTRACTORS, register_extractor

    if "timed_audio" not in EXTRACTORS:
        events: list[tuple[str, str]] = []

        @register_extractor
        class TimedAudio(AudioDemux):
            name = "timed_audio"
            events_ = events

            def load(self, clip, upstream=None):
                self.events_.append(("load+", clip.clip_id))
                return super().load(clip, upstream)

            def compute(self, inputs, upstream=None):
                self.events_.append(("compute+", ""))
                time.sleep(0.5)  # a model at work
                self.events_.append(("compute-", ""))
                return super().compute(inputs, upstream)

    return EXTRACTORS.get("timed_audio").events_


def test_the_next_shard_decodes_while_this_one_computes(tmp_path, clip_factory):
    """One worker, shards of one clip: clip k+1's decoding starts before clip k's compute ends."""
    import yaml

    events = _timed_audio()
    events.clear()
    for i in range(3):  # distinct files: identical ones share one row
        clip_factory(tmp_path / "data" / "x" / f"c{i}.mp4", freq=300 + 200 * i)
    cfg = tmp_path / "stages.yaml"
    cfg.write_text(yaml.safe_dump({
        "cache": str(tmp_path / "cache"), "default_dataset": "f",
        "execution": {"workers": 1, "shard_size": 1, "progress": False},
        "datasets": {"f": {"adapter": "folder", "root": str(tmp_path / "data")}},
        "stages": {"a": {"group": "extract", "implementation": "timed_audio", "params": {}}}}))
    [rep] = run("extract", config=cfg)
    assert rep.computed == 3 and rep.shards_computed == 3
    first_compute_end = events.index(("compute-", ""))
    assert ("load+", "x/c1") in events[:first_compute_end]  # the second shard was decoding meanwhile
