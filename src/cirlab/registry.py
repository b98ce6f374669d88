"""A tiny name -> factory registry, shared by backbones, methods and index backends."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, TypeVar

from .errors import CirlabError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a short name (the part of a spec string before ``:``) to a factory.

    ``declare(name, module, help)`` lists a name before its module is imported (so listing every
    backbone or method costs no torch import); the module is imported on the first ``get(name)`` and
    registers the factory with ``register(name)``, which keeps the declared help.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}
        self._lazy: dict[str, str] = {}

    def declare(self, name: str, module: str, help: str) -> None:
        """``name`` is registered by importing ``module`` (a dotted module path); ``help`` lists it until then."""
        if name in self._factories or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._lazy[name] = module
        self._help[name] = help

    def declare_all(self, package: str, table: dict[str, tuple[str, str]]) -> None:
        """``declare`` every ``name: (module under package, help)`` of ``table``."""
        for name, (module, help) in table.items():
            self.declare(name, f"{package}.{module}", help)

    def register(self, name: str, help: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            self._lazy.pop(name, None)
            self._help[name] = help or self._help.get(name) or (factory.__doc__ or "").strip().split("\n")[0]
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._factories and name in self._lazy:
            module = self._lazy[name]
            importlib.import_module(module)
            if name not in self._factories:
                raise KeyError(f"{self.kind} {name!r}: importing {module} did not register it")
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted({*self._factories, *self._lazy})

    def describe(self) -> dict[str, str]:
        return {n: self._help[n] for n in self.names()}

    def __contains__(self, name: str) -> bool:
        return name in self._factories or name in self._lazy


def split_spec(spec: str) -> tuple[str, str]:
    """``"tiny:world"`` -> ``("tiny", "world")``; ``"sum"`` -> ``("sum", "")``."""
    name, _, arg = spec.partition(":")
    return name.strip(), arg.strip()


def parse_spec_options(arg: str, known: dict[str, Callable[[str], Any]], what: str) -> tuple[str, dict[str, Any]]:
    """``"http://h:1/v1,model=x"`` -> ``("http://h:1/v1", {"model": "x"})`` with typed, checked options
    (the ``kind:arg,key=value`` option syntax of spec strings)."""
    head, *rest = arg.split(",")
    opts: dict[str, Any] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in known:
            raise CirlabError(f"{what}: option {item!r}: expected key=value with key in {sorted(known)}")
        try:
            opts[key.strip()] = known[key.strip()](value.strip())
        except ValueError:
            raise CirlabError(f"{what}: option {item!r}: bad value") from None
    return head.strip(), opts
