"""Methods: ``create_method("sum", backbone)``; spec ``name[:argument]``.

Every method is declared here by name, with its module and one-line help; the module is imported
(and registers the factory) when the method is first created, so listing methods costs no torch import.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import SpecError
from ..registry import Registry, split_spec

if TYPE_CHECKING:
    from ..backbones.base import Backbone
    from .base import Method

METHODS: "Registry[Method]" = Registry("method")

# name -> (module under cirlab.methods that registers it, one-line help); new methods add a line here
METHODS.declare_all(__name__, {
    "image": ("baselines", "reference image feature only"),
    "text": ("baselines", "modification text feature only"),
    "sum": ("baselines", "normalised sum of image and text features"),
    "weighted": ("baselines", "weighted average; 'weighted:0.7' gives the text weight 0.7"),
    "pic2word": ("textual_inversion", "Pic2Word: phi(image feature) -> pseudo word; pic2word:CHECKPOINT_DIR"),
    "searle": ("textual_inversion", "SEARLE: phi distilled from OTI tokens; searle:CHECKPOINT_DIR"),
    "lincir": ("textual_inversion", "LinCIR: phi trained on captions only; lincir:CHECKPOINT_DIR"),
    "searle-oti": ("textual_inversion", "SEARLE-OTI: per-reference token optimisation at query time; "
                                        "searle-oti[:STEPS]"),
    "combiner": ("combiner", "Combiner (CLIP4Cir-style fusion, supervised); combiner:CHECKPOINT_DIR"),
    "predicir": ("predicir", "PrediCIR: world-model prediction of missing target content -> pseudo word; "
                             "predicir:CHECKPOINT_DIR"),
    "fusion-diff": ("fusion_diff", "Fusion-Diff (diffusion prior + Control-Adapter); "
                                   "fusion-diff:CKPT_DIR[,mix=0.5,steps=1,...]"),
    "cig": ("cig", "CIG: pseudo-target from a proxy generator, inverted to a token, fused with the query's "
                   "inversion; cig:CONFIG.json (inversion, generator, weight)"),
    "ip-cir": ("ip_cir", "IP-CIR (training-free): imagined proxy + robust proxy feature + balanced similarity "
                         "(rescore); ip-cir:CONFIG.json"),
})

BASELINES = ("image", "text", "sum", "weighted")

#: hooks that rewrite a spec before it is created (a named pretrained configuration -> the spec of its
#: checkpoint, see ``cirlab.zoo``); each returns the new spec, or ``None`` when the spec is not theirs
SPEC_RESOLVERS: list[Callable[[str], "str | None"]] = []


def create_method(spec: str, backbone: "Backbone") -> "Method":
    given = spec
    for resolve in SPEC_RESOLVERS:
        new = resolve(spec)
        if new is not None:
            spec = new
            break
    name, arg = split_spec(spec)
    factory = METHODS.get(name)
    try:
        method = factory(arg, backbone=backbone)
    except ValueError as e:  # a bad argument in the spec (weighted:abc, weighted:5, ...)
        raise SpecError(f"method {given!r}: {e}") from None
    method.spec = given
    return method


def list_methods() -> dict[str, str]:
    return METHODS.describe()


def __getattr__(name: str) -> Any:  # the torch-backed names, imported on first use
    if name in ("Method", "QueryBatch"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BASELINES", "METHODS", "Method", "QueryBatch", "SPEC_RESOLVERS", "create_method", "list_methods"]
