"""A tiny name -> factory registry, shared by backbones, methods and index backends."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a short name (the part of a spec string before ``:``) to a factory."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            self._help[name] = help or (factory.__doc__ or "").strip().split("\n")[0]
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._factories)

    def describe(self) -> dict[str, str]:
        return {n: self._help[n] for n in self.names()}

    def __contains__(self, name: str) -> bool:
        return name in self._factories


def split_spec(spec: str) -> tuple[str, str]:
    """``"tiny:world"`` -> ``("tiny", "world")``; ``"sum"`` -> ``("sum", "")``."""
    name, _, arg = spec.partition(":")
    return name.strip(), arg.strip()
