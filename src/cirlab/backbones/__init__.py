"""Backbones: one factory from spec strings.

``create_backbone("tiny:world")`` -> the shipped tiny backbone trained on the built-in world;
``create_backbone("tiny:/path/to/dir")`` -> a tiny checkpoint directory.
Other kinds (``hf:``, ``openclip:``, ``conse:``) register themselves the same way.
"""
from __future__ import annotations

from ..registry import Registry, split_spec
from .base import PLACEHOLDER, Backbone, load_image

BACKBONES: Registry[Backbone] = Registry("backbone")

# kinds register on import
from . import tiny as _tiny  # noqa: E402,F401

_OPTIONAL_KINDS = {"hf": "hf", "openclip": "openclip", "conse": "conse"}


def _ensure_kind(kind: str) -> None:
    if kind in BACKBONES or kind not in _OPTIONAL_KINDS:
        return
    import importlib

    try:
        importlib.import_module(f"{__name__}.{_OPTIONAL_KINDS[kind]}")
    except ModuleNotFoundError as e:  # the module itself or an optional dependency is missing
        if e.name and e.name.startswith(__name__):
            return
        raise


def create_backbone(spec: str, device: str | None = None, **kwargs) -> Backbone:
    """Create a backbone from ``"kind:argument"`` (e.g. ``"tiny:world"``)."""
    kind, arg = split_spec(spec)
    _ensure_kind(kind)
    model = BACKBONES.get(kind)(arg, **kwargs)
    model.spec = spec
    model.eval()
    if device:
        model.to(device)
    return model


def list_backbones() -> dict[str, str]:
    for kind in _OPTIONAL_KINDS:
        try:
            _ensure_kind(kind)
        except ImportError:
            pass
    return BACKBONES.describe()


__all__ = ["BACKBONES", "Backbone", "PLACEHOLDER", "create_backbone", "list_backbones", "load_image"]
