"""The `pipeline` command: run, status, ls, gc, report, export, datasets."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import click

from .config import ConfigError
from .events import RunEvents
from .media import BACKENDS

log = logging.getLogger("pipeline")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _fail(msg: str) -> None:
    click.secho(f"error: {msg}", fg="red", err=True)
    sys.exit(2)


_common = [
    click.option("--config", "config_path", default="stages.yaml", show_default=True, help="the DAG file"),
    click.option("--cache", default=None, help="cache root (overrides stages.yaml and $PIPELINE_CACHE)"),
]


def common(fn: Any) -> Any:
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


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


@click.group()
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
def main(verbose: int) -> None:
    """Audio-visual feature and embedding pipeline."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")


@main.command("run")
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
    from .config import load_config
    from .datasets import DatasetError
    from extractors.weights import WeightsError

    from .executors import ExecutorError
    from .media import MediaError
    from .runner import PipelineError, run
    from .store import StoreError

    events = _Echo(no_progress)
    t0 = time.perf_counter()
    cfg = None
    try:
        cfg = load_config(config_path, overrides, cache)
        reports = run(group, dataset=dataset, stage=stage, config=cfg, strict=False, events=events,
                      retry_failed=retry_failed,
                      workers=workers, executor=executor, scheduler=scheduler, shard_size=shard_size,
                      device=device, batch_size=batch_size, media_backend=media_backend,
                      progress=not no_progress)
    except (ConfigError, DatasetError, PipelineError, StoreError, MediaError, ExecutorError, WeightsError,
            KeyError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e}; check the --cache and --config paths and free disk space")
    except KeyboardInterrupt:
        events.close_bar()
        try:
            kept = _kept_runs(cfg, dataset, group, stage)
        except KeyboardInterrupt:  # a second Ctrl-C: no summary of the runs
            kept = ""
        click.secho(f"interrupted; {events.shards} shard(s) committed{kept}, rerun to resume", fg="red", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # not sys.exit: a second Ctrl-C must not wait on worker processes at interpreter exit
    finally:
        events.close_bar()
    from .training import RunReport

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
        from .plan import make_plan
        from .runner import make_adapter, status

        wanted = set(make_plan(cfg, make_adapter(cfg, dataset), group, stage).selected)
        kept = [f"{r['stage']} {r['state']}" for r in status(cfg, dataset)
                if r["stage"] in wanted and r["state"].startswith("partial:")]
    except Exception:  # noqa: BLE001  (only a summary: the runs on disk are what they are)
        return ""
    return f", and {'; '.join(kept)}" if kept else ""


def _dry_run(group: str, stage: str | None, dataset: str | None, overrides: tuple[str, ...],
             media_backend: str | None, config_path: str, cache: str | None) -> None:
    """Print the plan of `pipeline run` with what each stage would do; compute nothing."""
    from .config import load_config
    from .datasets import DatasetError
    from .runner import PipelineError, dry_run

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
    from .registry import TASKS

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


@main.command("status")
@click.option("--dataset", default=None)
@click.option("--all", "everything", is_flag=True, help="also the stages left out for this dataset, and why")
@common
def status_cmd(dataset: str | None, everything: bool, config_path: str, cache: str | None) -> None:
    """Per stage that applies to the dataset: up to date, missing, partial N of M clips, or stale."""
    from .config import load_config
    from .datasets import DatasetError
    from .runner import PipelineError, status
    from .store import StoreError
    from extractors.weights import WeightsError

    try:
        rows = status(load_config(config_path, cache=cache), dataset, everything)
    except (ConfigError, DatasetError, PipelineError, StoreError, WeightsError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e}; check the --cache and --config paths")
    width = max(len(r["stage"]) for r in rows) if rows else 5
    for r in rows:
        extra = ""
        if r["failed"]:
            kinds = (f": {r['failed'] - r['transient']} for good, {r['transient']} may pass on a retry (the next run "
                     "retries them)" if r.get("transient") else "")
            extra = f" ({r['failed']} failed{kinds})"
        click.echo(f"{r['stage']:<{width}}  {r['state']}{extra}")


@main.command("ls")
@common
def ls_cmd(config_path: str, cache: str | None) -> None:
    """Stores and runs in the cache, with sizes."""
    from .config import load_config
    from .runner import list_cache

    try:
        cfg = load_config(config_path, cache=cache)
    except ConfigError as e:
        _fail(str(e))
    items = list_cache(cfg)
    if not items:
        click.echo(f"cache {cfg.cache} is empty")
        return
    total = 0
    for it in items:
        total += it["bytes"]
        if it["kind"] == "store":
            read_by = ", ".join(it["datasets"]) or "no dataset's last run"
            old = " (old layout: the next run moves it)" if it["legacy"] else ""
            click.echo(f"{_human(it['bytes']):>10}  {it['rows']:>6} rows  {it['stage']} (read by {read_by}){old}  "
                       f"{it['extractor']} {it['params']}  {it['path']}")
            if it["damaged"]:
                click.secho(f"{'':>10}  damaged: {it['damaged']}", fg="yellow")
        else:
            click.echo(f"{_human(it['bytes']):>10}  run  {it['path']}")
    click.echo(f"{_human(total):>10}  total in {cfg.cache}")


@main.command("gc")
@click.option("--dry-run", is_flag=True, help="list what would be removed")
@click.option("--all", "everything", is_flag=True,
              help="also remove the stores of datasets that stages.yaml does not name")
@common
def gc_cmd(dry_run: bool, everything: bool, config_path: str, cache: str | None) -> None:
    """Remove stores and run directories that no current key in stages.yaml references (never one a running run uses)."""
    from .config import load_config
    from .runner import collect_garbage

    try:
        removed, skipped = collect_garbage(load_config(config_path, cache=cache), dry_run=dry_run,
                                           everything=everything)
    except ConfigError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e}; gc needs a writable cache")
    verb = "would remove" if dry_run else "removed"
    for path, size in removed:
        click.echo(f"{verb} {path} ({_human(size)})")
    for s in skipped:
        click.echo(f"kept: {s}")
    n_runs = sum(1 for p, _ in removed if p.parent.parent.name == "runs")
    click.echo(f"{verb} {len(removed) - n_runs} store(s) and {n_runs} run(s), {_human(sum(s for _, s in removed))}")


@main.command("verify")
@click.option("--dataset", default=None, help="dataset from stages.yaml (default: default_dataset)")
@click.option("--stage", default=None, help="only this stage's store")
@common
def verify_cmd(dataset: str | None, stage: str | None, config_path: str, cache: str | None) -> None:
    """Hash every shard of the dataset's stores against its commit record; mark damaged ones for recompute."""
    from .config import load_config
    from .datasets import DatasetError
    from .plan import make_plan
    from .registry import EXTRACTORS
    from .runner import PipelineError, make_adapter, resolve
    from .store import verify_store
    from extractors.weights import WeightsError

    try:
        cfg = load_config(config_path, cache=cache)
        if stage and stage not in cfg.stages:
            raise ConfigError(f"{cfg.path}: unknown stage '{stage}'; known: {', '.join(cfg.stages)}")
        unresolved: dict[str, str] = {}
        if stage:
            ctx = resolve(cfg, dataset, only=[stage])
        else:  # every feature stage that applies to the dataset; one that cannot resolve has no store to verify
            plan = make_plan(cfg, make_adapter(cfg, dataset), prepare=False)
            features = [n for n in plan.applying if cfg.stages[n].implementation in EXTRACTORS]
            ctx = resolve(cfg, dataset, only=features, exact=True, manifest=plan.manifest, errors=unresolved)
        if stage and stage not in ctx.stages:
            raise ConfigError(f"stage '{stage}' has no feature store for dataset '{ctx.dataset}'")
        names = [stage] if stage else list(ctx.stages)
        for name in [n for n in unresolved if not stage and plan.stages[n].runs]:
            click.secho(f"{name}: cannot resolve: {unresolved[name]}", fg="yellow")
        bad: list[str] = []
        for name in names:
            path = ctx.stages[name].store_path
            if not (path / "commits").is_dir():
                if stage or plan.stages[name].runs:  # (a stage no method here reads: nothing to say)
                    click.echo(f"{name}: no store yet")
                continue
            found = verify_store(path, ctx.rows[name])
            if not found.damaged:
                click.echo(f"{name}: {found.checked} shard(s) verified")
                continue
            bad.append(name)
            shards = [k for k in found.damaged if k != "attrs.json" and not k.startswith("orphan ")]
            if not shards:
                what = "damaged:"
            elif found.marked:
                what = f"{len(shards)} of {found.checked} shard(s) damaged, marked for recomputation:"
            else:
                what = (f"{len(shards)} of {found.checked} shard(s) damaged, NOT marked for recomputation "
                        f"({found.unmarked_why}): rerun `pipeline verify` where the cache is writable, then `pipeline "
                        "run` recomputes them:")
            click.secho(f"{name}: {what}", fg="yellow")
            for sid, why in list(found.damaged.items())[:20]:
                click.echo(f"  {sid}: {why}")
    except (ConfigError, DatasetError, WeightsError, PipelineError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e}; check the --cache and --config paths")
    if bad:
        group = cfg.stages[bad[0]].group
        click.secho(f"damaged: {', '.join(bad)}; run `pipeline run {group} --dataset {ctx.dataset}` to recompute "
                    "the damaged shards", fg="red", err=True)
        sys.exit(1)


@main.command("report")
@click.option("--dataset", default=None, help="only this dataset's runs (default: all)")
@click.option("--out", default=None, help="HTML page to write (default: CACHE/reports/index.html)")
@common
def report_cmd(dataset: str | None, out: str | None, config_path: str, cache: str | None) -> None:
    """Compare every train run in the cache: a table here and an HTML page with the PR curves."""
    from pathlib import Path

    from .config import load_config
    from .report import collect, format_text, write_html

    try:
        cfg = load_config(config_path, cache=cache)
    except ConfigError as e:
        _fail(str(e))
    rows = collect(cfg.cache, dataset)
    click.echo(format_text(rows))
    if rows:
        try:
            page = write_html(rows, Path(out) if out else cfg.cache / "reports" / "index.html")
        except OSError as e:
            _fail(f"cannot write the report page: {e}")
        click.echo(f"report: {page}")


@main.command("embed")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="a completed train run's directory (its model embeds)")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="a folder of images: each file's image embedding")
@click.option("--texts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a text file: each line's text embedding")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for the stores (image/, text/)")
@click.option("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
def embed_cmd(run_dir: str, images: str | None, texts: str | None, out: str, device: str) -> None:
    """Embed new images and sentences with a trained run (DSVE-loc's feature extraction) into stores."""
    from pathlib import Path

    from .embed import EmbedError, embed_images, embed_texts

    if not images and not texts:
        _fail("give --images FOLDER and/or --texts FILE")
    run, dest = Path(run_dir), Path(out)
    if not (run / "metrics.json").exists() or not (run / "model.pt").exists():
        _fail(f"{run} is not a completed train run (no metrics.json / model.pt); run its train stage first")
    try:
        if texts:
            click.echo(f"text embeddings: {embed_texts(run, Path(texts), dest)}")
        if images:
            click.echo(f"image embeddings: {embed_images(run, Path(images), dest, device=device)}")
    except (EmbedError, ValueError) as e:
        _fail(str(e))


@main.command("convert-vggish")
@click.argument("source")
@click.argument("out")
@click.option("--pca", default=None, help="vggish_pca_params.npz to embed (for postprocess: true)")
def convert_vggish_cmd(source: str, out: str, pca: str | None) -> None:
    """Convert TF VGGish weights (checkpoint prefix or SavedModel dir) to a torch state dict OUT."""
    from extractors.vggish_convert import convert
    from extractors.weights import WeightsError

    try:
        path = convert(source, out, pca)
    except ImportError:
        _fail("converting needs TensorFlow: pip install -e .[tfhub]")
    except (WeightsError, OSError) as e:
        _fail(str(e))
    click.echo(f"wrote {path}; use it with `--set vggish.weights={path}`")


@main.command("export")
@click.argument("out")
@click.option("--stage", "stages", multiple=True, required=True,
              help="a feature stage; repeat it (tnn-h5 takes one audio and one visual stage)")
@click.option("--format", "fmt", type=click.Choice(["tnn-h5"]), default="tnn-h5", show_default=True)
@click.option("--dataset", default=None, help="dataset from stages.yaml (default: default_dataset)")
@click.option("--test-fold", type=int, default=None,
              help="export fold K as the test set (default: the dataset's own train/test split)")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.PARAM=VALUE", help="as for `pipeline run`")
@click.option("--force", is_flag=True, help="replace OUT if it exists")
@common
def export_cmd(out: str, stages: tuple[str, ...], fmt: str, dataset: str | None, test_fold: int | None,
               overrides: tuple[str, ...], force: bool, config_path: str, cache: str | None) -> None:
    """Write feature stores to OUT in another tool's format (tnn-h5: TNN-C-CCA's vegas_feature.h5)."""
    from .config import load_config
    from .datasets import DatasetError
    from .export import FORMATS
    from .runner import PipelineError
    from .store import StoreError

    try:
        counts = FORMATS[fmt](load_config(config_path, overrides, cache), dataset, list(stages), out,
                              test_fold=test_fold, force=force)
    except (ConfigError, DatasetError, PipelineError, StoreError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write {out}: {e}")
    extra = "".join(f", {counts[k]} {k}" for k in ("failed", "skipped") if counts[k])
    click.echo(f"wrote {out}: {counts['train']} train and {counts['test']} test clips{extra}")


@main.command("datasets")
def datasets_cmd() -> None:
    """The dataset adapters, the root layout each expects and where each corpus is published."""
    from . import datasets  # noqa: F401
    from .registry import DATASETS

    for name in DATASETS.names():
        cls = DATASETS.get(name)
        kind = " [pre-extracted features: run the `import` group]" if cls.kind == "features" else ""
        click.echo(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}{kind}")
        for line in cls.layout.splitlines():
            click.echo(f"    {line}")
        if cls.published:
            click.echo(f"    published: {cls.published}")


if __name__ == "__main__":  # pragma: no cover
    main()
