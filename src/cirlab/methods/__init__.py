"""Methods: ``create_method("sum", backbone)``; spec ``name[:argument]``."""
from __future__ import annotations

import importlib
from typing import Callable

from ..backbones.base import Backbone
from ..registry import Registry, split_spec
from .base import Method, QueryBatch

METHODS: Registry[Method] = Registry("method")

# modules that register methods; later issues append theirs
METHOD_MODULES = ["baselines", "textual_inversion", "combiner", "predicir", "fusion_diff", "proxies", "cig", "ip_cir"]
for _m in METHOD_MODULES:
    importlib.import_module(f"{__name__}.{_m}")

BASELINES = ("image", "text", "sum", "weighted")

#: hooks that rewrite a spec before it is created (a named pretrained configuration -> the spec of its
#: checkpoint, see ``cirlab.zoo``); each returns the new spec, or ``None`` when the spec is not theirs
SPEC_RESOLVERS: list[Callable[[str], "str | None"]] = []


def create_method(spec: str, backbone: Backbone) -> Method:
    given = spec
    for resolve in SPEC_RESOLVERS:
        new = resolve(spec)
        if new is not None:
            spec = new
            break
    name, arg = split_spec(spec)
    method = METHODS.get(name)(arg, backbone=backbone)
    method.spec = given
    return method


def list_methods() -> dict[str, str]:
    return METHODS.describe()


__all__ = ["BASELINES", "METHODS", "Method", "QueryBatch", "SPEC_RESOLVERS", "create_method", "list_methods"]
