"""Methods: ``create_method("sum", backbone)``; spec ``name[:argument]``."""
from __future__ import annotations

import importlib

from ..backbones.base import Backbone
from ..registry import Registry, split_spec
from .base import Method, QueryBatch

METHODS: Registry[Method] = Registry("method")

# modules that register methods; later issues append theirs
METHOD_MODULES = ["baselines", "textual_inversion", "combiner", "predicir", "fusion_diff", "proxies", "cig", "ip_cir"]
for _m in METHOD_MODULES:
    importlib.import_module(f"{__name__}.{_m}")

BASELINES = ("image", "text", "sum", "weighted")


def create_method(spec: str, backbone: Backbone) -> Method:
    name, arg = split_spec(spec)
    method = METHODS.get(name)(arg, backbone=backbone)
    method.spec = spec
    return method


def list_methods() -> dict[str, str]:
    return METHODS.describe()


__all__ = ["BASELINES", "METHODS", "Method", "QueryBatch", "create_method", "list_methods"]
