"""What every `pipeline` command shares: the --config/--cache options, sizes for people, the error exit."""
from __future__ import annotations

import sys
from typing import Any

import click


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
