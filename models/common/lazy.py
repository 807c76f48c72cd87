"""A module imported on first use: `torch = lazy("torch")` keeps `import models` (and so loading stages.yaml)
free of torch's 2 s start-up until a trainer actually computes."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _Lazy:
    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


def lazy(name: str) -> Any:
    """A stand-in for module `name` that imports it at the first attribute access."""
    return _Lazy(name)
