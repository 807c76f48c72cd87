"""The `pipeline` command group and its commands: status, ls, gc, verify, report, embed, export, datasets (`run` in
run.py)."""
from __future__ import annotations

import logging
import sys

import click

from ..config import ConfigError
from .common import _fail, _human, common
from .run import run_cmd

log = logging.getLogger("pipeline")


@click.group()
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
def main(verbose: int) -> None:
    """Audio-visual feature and embedding pipeline."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")


main.add_command(run_cmd)


@main.command("status")
@click.option("--dataset", default=None)
@click.option("--all", "everything", is_flag=True, help="also the stages left out for this dataset, and why")
@common
def status_cmd(dataset: str | None, everything: bool, config_path: str, cache: str | None) -> None:
    """Per stage that applies to the dataset: up to date, missing, partial N of M clips, or stale."""
    from extractors.weights import WeightsError

    from ..config import load_config
    from ..datasets import DatasetError
    from ..runner import PipelineError, status
    from ..store import StoreError

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
    from ..config import load_config
    from ..runner import list_cache

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
    from ..config import load_config
    from ..runner import collect_garbage

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
    from extractors.weights import WeightsError

    from ..config import load_config
    from ..datasets import DatasetError
    from ..plan import make_plan
    from ..registry import EXTRACTORS
    from ..runner import PipelineError, make_adapter, resolve
    from ..store import verify_store

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

    from ..config import load_config
    from ..report import collect, format_text, write_html

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
@click.option("--sounds", type=click.Path(exists=True, file_okay=False), default=None,
              help="a folder of sounds or spoken captions: each file's audio embedding")
@click.option("--texts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a text file: each line's text embedding")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for the stores (image/, text/)")
@click.option("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
def embed_cmd(run_dir: str, images: str | None, sounds: str | None, texts: str | None, out: str, device: str) -> None:
    """Embed new images, sounds and sentences with a trained run (DSVE-loc's feature extraction) into stores."""
    from pathlib import Path

    from ..embed import EmbedError, embed_images, embed_sounds, embed_texts
    from ..query import RunQueries

    if not images and not texts and not sounds:
        _fail("give --images FOLDER, --sounds FOLDER and/or --texts FILE")
    dest = Path(out)
    try:
        run = RunQueries(Path(run_dir), device=device)
        if texts:
            click.echo(f"text embeddings: {embed_texts(run, Path(texts), dest)}")
        if images:
            click.echo(f"image embeddings: {embed_images(run, Path(images), dest)}")
        if sounds:
            click.echo(f"audio embeddings: {embed_sounds(run, Path(sounds), dest)}")
    except (EmbedError, ValueError) as e:
        _fail(str(e))


@main.command("serve")
@click.option("--run", "run_dir", default=None, type=click.Path(file_okay=False),
              help="open on this run (its directory under CACHE/runs)")
@click.option("--dataset", default=None, help="only this dataset's runs")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="the address to listen on; anything but loopback exposes your data to the network")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="where queries are embedded: cpu, cuda, auto")
@common
def serve_cmd(run_dir: str | None, dataset: str | None, host: str, port: int, device: str, config_path: str,
              cache: str | None) -> None:
    """A local web app over the runs in the cache: search from any modality to any other, explain, browse."""
    from pathlib import Path

    from ..config import load_config

    try:
        cfg = load_config(config_path, cache=cache)
    except ConfigError as e:
        _fail(str(e))
    try:
        import uvicorn

        from ..serve import ServeError, create_app
    except ImportError as e:
        _fail(f"pipeline serve needs its extra ({e.name} is missing): pip install 'avpipeline[serve]'")
    if dataset is not None and dataset not in cfg.datasets:
        _fail(f"unknown dataset '{dataset}'; stages.yaml has: {', '.join(cfg.datasets)}")
    try:
        app = create_app(cfg, dataset, Path(run_dir) if run_dir else None, device)
    except ServeError as e:
        _fail(f"--run {run_dir}: {e.message}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who reaches this address can read the runs and datasets served", host)
    click.echo(f"serving {cfg.cache / 'runs'} on http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


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
    from ..config import load_config
    from ..datasets import DatasetError
    from ..export import FORMATS
    from ..runner import PipelineError
    from ..store import StoreError

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
    from ..registry import DATASETS

    for name in DATASETS.names():
        cls = DATASETS.get(name)
        kind = " [pre-extracted features: run the `import` group]" if cls.kind == "features" else ""
        click.echo(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}{kind}")
        for line in cls.layout.splitlines():
            click.echo(f"    {line}")
        if cls.published:
            click.echo(f"    published: {cls.published}")

