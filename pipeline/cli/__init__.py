"""The `pipeline` command (`pipeline.cli:main`)."""
from .main import main

__all__ = ["main"]
