"""`pipeline run GROUP`: the stages of a group that apply to a dataset, with progress, and the tables after."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import click

from ..config import ConfigError
from ..events import RunEvents
from ..media import BACKENDS
from .common import _fail, _human, common


class _Echo(RunEvents):
    """What `pipeline run` shows of a run: each feature stage's plan and a progress bar, notices in yellow, waits and
    epochs on stderr; the stages skipped are gathered to be said once after the work."""

    def __init__(self, no_progress: bool) -> None:
        self.no_progress = no_progress
        self.bar: Any = None  # the current stage's progress bar
        self.shards = 0  # committed so far, for the message after Ctrl-C
        self.skips: dict[str, list[str]] = {}  # reason -> stages that do not apply for it

    def close_bar(self) -> None:
        """Close the current stage's progress bar, if any."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def plan(self, report: Any, n_compute: int) -> None:
        from tqdm import tqdm

        self.close_bar()
        if n_compute == 0:
            click.echo(f"{report.name}: up to date, {report.reused} clips reused ({report.shards_reused} shards); "
                       "nothing to compute")
            return
        retried = f" ({report.retried} of them failed before and are retried)" if report.retried else ""
        what = (f"{n_compute} rows to compute for {n_compute + report.shared} of {report.total} clips" if report.shared
                else f"{n_compute} of {report.total} clips to compute")
        click.echo(f"{report.name}: {what}{retried}; reusing {report.reused} clips from {report.shards_reused} "
                   "committed shards")
        self.bar = tqdm(total=n_compute, unit="clip", desc=report.name, disable=self.no_progress, dynamic_ncols=True)

    def progress(self, n: int) -> None:
        self.shards += 1
        if self.bar is not None:
            self.bar.update(n)

    def notice(self, message: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        click.secho(message, fg="yellow", err=True)

    def wait(self, message: str) -> None:
        click.echo(message, err=True)

    def skip(self, stage: str, why: str) -> None:
        self.skips.setdefault(why, []).append(stage)

    def epoch(self, stage: str, epoch: int, total: int, what: str, score: float) -> None:
        if not self.no_progress:
            click.echo(f"{stage}: epoch {epoch}/{total}, validation {what} {score:.4g}", err=True)


@click.command("run")
@click.argument("group")
@click.option("--stage", default=None, help="run only this stage (and what it needs)")
@click.option("--dataset", default=None, help="dataset from stages.yaml (default: default_dataset)")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.PARAM=VALUE", help="override an identity param")
@click.option("--strict", is_flag=True, help="any failed clip makes the run fail (exit 1)")
@click.option("--retry-failed", is_flag=True, help="compute every failed clip again (a run retries by itself only "
                                                   "the failures that may not recur: crashes, hangs, I/O errors)")
@click.option("--workers", type=int, default=None, help="worker processes (or dask workers)")
@click.option("--executor", type=click.Choice(["local", "dask"]), default=None, help="local processes or dask")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address, e.g. tcp://host:8786")
@click.option("--shard-size", type=int, default=None, help="clips per shard (the unit of work and of resume)")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 or auto")
@click.option("--batch-size", type=int, default=None, help="clips per model batch")
@click.option("--media-backend", type=click.Choice(BACKENDS), default=None,
              help="decode with PyAV in-process (pyav, the default) or the ffmpeg programs (ffmpeg)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.option("--dry-run", is_flag=True, help="print the plan (what would be computed, reused, left out and why) "
                                              "and compute nothing")
@common
def run_cmd(group: str, stage: str | None, dataset: str | None, overrides: tuple[str, ...], strict: bool,
            retry_failed: bool, workers: int | None, executor: str | None, scheduler: str | None, shard_size: int | None,
            device: str | None, batch_size: int | None, media_backend: str | None, no_progress: bool,
            dry_run: bool, config_path: str, cache: str | None) -> None:
    """Run the stages of GROUP (e.g. extract, train, evaluate) that apply to the dataset, and what they read."""
    if dry_run:
        _dry_run(group, stage, dataset, overrides, media_backend, config_path, cache)
        return
    from extractors.weights import WeightsError

    from ..config import load_config
    from ..datasets import DatasetError
    from ..executors import ExecutorError
    from ..media import MediaError
    from ..runner import PipelineError, run
    from ..store import StoreError

    events = _Echo(no_progress)
    t0 = time.perf_counter()
    cfg = None
    signals: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        signals.append(signum)
        raise KeyboardInterrupt

    # a Ctrl-C can surface as another error (a library's cleanup of a write it interrupted failing, say): every error
    # after one is reported as the interruption it is, since what was committed is whole either way
    signal.signal(signal.SIGINT, on_sigint)

    def stop() -> None:
        events.close_bar()
        try:
            kept = _kept_runs(cfg, dataset, group, stage)
        except KeyboardInterrupt:  # a second Ctrl-C: no summary of the runs
            kept = ""
        click.secho(f"interrupted; {events.shards} shard(s) committed{kept}, rerun to resume", fg="red", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # not sys.exit: a second Ctrl-C must not wait on worker processes at interpreter exit

    try:
        cfg = load_config(config_path, overrides, cache)
        reports = run(group, dataset=dataset, stage=stage, config=cfg, strict=False, events=events,
                      retry_failed=retry_failed,
                      workers=workers, executor=executor, scheduler=scheduler, shard_size=shard_size,
                      device=device, batch_size=batch_size, media_backend=media_backend,
                      progress=not no_progress)
    except KeyboardInterrupt:
        stop()
    except (ConfigError, DatasetError, PipelineError, StoreError, MediaError, ExecutorError, WeightsError,
            KeyError) as e:
        if signals:
            stop()
        _fail(str(e))
    except OSError as e:
        if signals:
            stop()
        _fail(f"{e}; check the --cache and --config paths and free disk space")
    finally:
        events.close_bar()
    from ..training import RunReport

    runs = [r for r in reports if isinstance(r, RunReport)]
    reports = [r for r in reports if not isinstance(r, RunReport)]
    failed: set[str] = set()
    for r in reports:
        if r.computed or r.failed:
            shared = f" ({r.shared} of them read a row another clip of this run computed)" if r.shared else ""
            click.echo(f"{r.name}: computed {r.computed} clips{shared} in {r.shards_computed} shards, reused {r.reused} "
                       f"({r.shards_reused} shards), {r.failed} failed, {r.seconds:.1f} s")
        if r.failures:
            click.secho(f"{r.name}: {len(r.failures)} clip(s) failed (log: {r.failures_log}):",
                        fg="yellow")
            for f in r.failures[:20]:
                click.echo(f"  {f['id']}: {f['reason']}")
            if len(r.failures) > 20:
                click.echo(f"  ... and {len(r.failures) - 20} more")
        failed.update(f["id"] for f in r.failures)
    for r in reports:
        click.echo(f"{r.name}: {r.store_path}")
    random = []
    for r in reports:
        attrs = json.loads((r.store_path / "attrs.json").read_text())
        if attrs.get("random_weights"):
            random.append(r.name)
            click.secho(f"{r.name}: computed with RANDOM weights ({attrs['params'].get('weights')}): "
                        "not pretrained features, for smoke tests only", fg="yellow", bold=True)
    _echo_runs(runs, random)
    if events.skips:
        click.echo("skipped, they do not apply to this dataset: " + "; ".join(
            f"{', '.join(names)} ({why})" for why, names in events.skips.items()))
    click.echo(f"done in {time.perf_counter() - t0:.1f} s")
    if strict and failed:
        click.secho(f"error: {len(failed)} clip(s) failed and --strict is set", fg="red", err=True)
        sys.exit(1)


def _kept_runs(cfg: Any, dataset: str | None, group: str, stage: str | None) -> str:
    """After Ctrl-C: what the run's train stages kept on disk (folds, epoch checkpoints), read from the runs."""
    if cfg is None:
        return ""
    try:
        from ..plan import make_plan
        from ..runner import make_adapter, status

        wanted = set(make_plan(cfg, make_adapter(cfg, dataset), group, stage).selected)
        kept = [f"{r['stage']} {r['state']}" for r in status(cfg, dataset)
                if r["stage"] in wanted and r["state"].startswith("partial:")]
    except Exception:  # noqa: BLE001  (only a summary: the runs on disk are what they are)
        return ""
    return f", and {'; '.join(kept)}" if kept else ""


def _dry_run(group: str, stage: str | None, dataset: str | None, overrides: tuple[str, ...],
             media_backend: str | None, config_path: str, cache: str | None) -> None:
    """Print the plan of `pipeline run` with what each stage would do; compute nothing."""
    from ..config import load_config
    from ..datasets import DatasetError
    from ..runner import PipelineError, dry_run

    try:
        cfg = load_config(config_path, overrides, cache)
        rows = dry_run(group, dataset=dataset, stage=stage, config=cfg, media_backend=media_backend)
    except (ConfigError, DatasetError, PipelineError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e}; check the --cache and --config paths")
    width = max(len(r["stage"]) for r in rows)
    total = 0
    for r in rows:
        if r["action"] == "left out":
            continue
        what = r["action"]
        if r["action"] == "compute":
            total += r["bytes"]
            size = f"{'about ' if r['estimated'] else ''}{_human(r['bytes'])}"
            what = f"compute {r['clips']} of {r['total']} clips ({size})"
        elif r["action"] == "reuse" and "total" in r:
            what = f"reuse all {r['total']} clips"
        click.secho(f"{r['stage']:<{width}}  {what}; {r['reason']}",
                    fg="red" if r["action"] == "cannot resolve" else None)
    out = [r for r in rows if r["action"] == "left out"]
    if out:
        click.echo("left out:")
        for r in out:
            click.echo(f"  {r['stage']:<{width}}  {r['reason']}")
    click.echo(f"dry run: nothing computed; the stores would take {_human(total)} more"
               + (" (clips of unknown length counted as 10 s)" if any(r["estimated"] for r in rows) else ""))
    if any(r["action"] == "cannot resolve" for r in rows):
        sys.exit(2)


def _echo_runs(runs: list[Any], random: list[str]) -> None:
    from ..registry import TASKS

    for r in runs:
        task = TASKS.get(r.task)()
        if r.kind == "train":
            m = r.metrics
            if r.reused:
                did = "up to date, run reused"
            elif "best_epoch" in m:
                resumed = m.get("resumed_at_epoch", 0)
                did = (f"trained {m['epochs']} epochs{f' (resumed after epoch {resumed})' if resumed else ''}, "
                       f"best epoch {m['best_epoch']}, {r.seconds:.1f} s")
            else:
                did = f"trained {r.units_trained} fold(s), reused {r.units_reused}, {r.seconds:.1f} s"
            click.echo(f"{r.name}: {did}; {r.run_dir}")
            click.echo(f"  {task.line(m)}")
        else:
            click.echo(f"{r.name}: {'up to date, reused' if r.reused else 'evaluated'}; {r.run_dir}")
            click.echo(task.table(r.metrics["runs"]))
            if (r.run_dir / task.plot_file).exists():
                click.echo(f"{task.plot_label}: {r.run_dir / task.plot_file}")
    if runs and random:
        click.secho("these runs read features computed with RANDOM weights: the numbers show the pipeline "
                    "works, not what pretrained features achieve", fg="yellow")
