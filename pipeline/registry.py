"""Named registries: datasets, extractors, trainers, evaluators, training tasks and store backends each have one."""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """A name was registered twice, or looked up but never registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps a unique `name` to a class; the CLI's choices are built from it. The `providers` (the packages
    whose modules register the entries) are imported on the first lookup, so no caller has to import them
    first."""

    def __init__(self, kind: str, providers: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._providers = providers
        self._loaded = not providers

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a provider's own lookups while it imports must not import it again
            for module in self._providers:
                importlib.import_module(module)

    def register(self, obj: T) -> T:
        """Register `obj` under its `name` attribute; refuse duplicates (usable as a decorator)."""
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} {obj!r} has no `name` attribute to register it under")
        if name in self._items and self._items[name] is not obj:
            raise RegistryError(
                f"{self.kind} '{name}' is already registered by {self._items[name]!r}; "
                f"pick another name for {obj!r}")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """Return the entry called `name`, or fail listing the known names."""
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} '{name}'; known: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _decorator(registry: Registry[T]) -> Callable[[T], T]:
    return registry.register


DATASETS: Registry = Registry("dataset adapter", ("pipeline.datasets",))
EXTRACTORS: Registry = Registry("extractor", ("extractors",))
TRAINERS: Registry = Registry("trainer", ("models",))
EVALUATORS: Registry = Registry("evaluator", ("models",))
STORE_BACKENDS: Registry = Registry("store backend", ("pipeline.store",))
TASKS: Registry = Registry("task", ("pipeline.training", "models"))

register_dataset = _decorator(DATASETS)
register_extractor = _decorator(EXTRACTORS)
register_trainer = _decorator(TRAINERS)
register_evaluator = _decorator(EVALUATORS)
register_backend = _decorator(STORE_BACKENDS)
register_task = _decorator(TASKS)
