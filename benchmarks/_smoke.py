"""`--smoke` for every benchmark: the same code at a tiny size, one repetition, on the CPU (CI runs each so)."""
from __future__ import annotations

import argparse
from typing import Any


def parse(ap: argparse.ArgumentParser, **tiny: Any) -> argparse.Namespace:
    """Parse the command line; with --smoke, the `tiny` values replace the sizes given or defaulted."""
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny run on the CPU, one repetition (CI): " + ", ".join(f"{k}={v}" for k, v in tiny.items()))
    args = ap.parse_args()
    if args.smoke:
        for name, value in tiny.items():
            setattr(args, name, value)
        print(f"(smoke run: {', '.join(f'{k}={v}' for k, v in tiny.items())}; the numbers mean nothing)")
    return args
