"""Named registries: datasets, extractors, trainers, evaluators, training tasks and store backends each have one."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """A name was registered twice, or looked up but never registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps a unique `name` to a class; the CLI's choices are built from it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

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
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} '{name}'; known: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _decorator(registry: Registry[T]) -> Callable[[T], T]:
    return registry.register


DATASETS: Registry = Registry("dataset adapter")
EXTRACTORS: Registry = Registry("extractor")
TRAINERS: Registry = Registry("trainer")
EVALUATORS: Registry = Registry("evaluator")
STORE_BACKENDS: Registry = Registry("store backend")
TASKS: Registry = Registry("task")

register_dataset = _decorator(DATASETS)
register_extractor = _decorator(EXTRACTORS)
register_trainer = _decorator(TRAINERS)
register_evaluator = _decorator(EVALUATORS)
register_backend = _decorator(STORE_BACKENDS)
register_task = _decorator(TASKS)
