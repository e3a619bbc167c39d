"""Name -> object registries, so the CLI and configs can refer to activations, inits, losses and
solvers by name, and adding one is adding one function in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None):
        """Register ``item`` under ``name``; usable as a decorator when ``item`` is omitted."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered.")
            self._items[name] = obj
            return obj

        return add if item is None else add(item)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._items))

    def check(self, name: str, field: str | None = None) -> str:
        if not isinstance(name, str) or name not in self._items:
            field = field or self.kind
            raise ValueError(
                f"{field}={name!r} is not a known {self.kind}; allowed: {', '.join(self.names())}."
            )
        return name

    def get(self, name: str, field: str | None = None) -> T:
        return self._items[self.check(name, field)]

    def __contains__(self, name: object) -> bool:
        return name in self._items


def callable_or_name(registry: Registry[Callable], value, field: str):
    if callable(value):
        return value
    return registry.get(value, field)
