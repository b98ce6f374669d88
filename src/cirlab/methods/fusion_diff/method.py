"""The ``fusion-diff`` method and proxy generator.

Spec: ``fusion-diff:CHECKPOINT_DIR`` with optional overrides of the checkpoint's
sampling settings after commas, e.g. ``fusion-diff:ckpt,mix=0.3,steps=20,samples=4``
(keys: steps, eta, guidance, samples, seed, mix). The query is the generated target
embedding, mixed with the fused feature by ``mix`` (0 = generated only).
"""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import torch
import torch.nn.functional as F

from ...backbones.base import Backbone
from ...errors import CirlabError
from .. import METHODS
from ..base import Method, QueryBatch
from ..generators import PROXY_GENERATORS
from .checkpoint import KIND, FusionDiffCheckpoint, load_fusion_diff
from .pipeline import SamplingConfig

_TYPES = {"steps": int, "eta": float, "guidance": float, "samples": int, "seed": int, "mix": float}


def parse_spec_arg(arg: str) -> tuple[str, dict[str, Any]]:
    """``"ckpt,mix=0.3,steps=5"`` -> ``("ckpt", {"mix": 0.3, "steps": 5})``."""
    parts = arg.split(",")
    path, overrides = parts[0].strip(), {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _TYPES:
            raise CirlabError(f"fusion-diff:{arg}: bad option {part!r}; use key=value with key in {sorted(_TYPES)}")
        try:
            overrides[key] = _TYPES[key](value.strip())
        except ValueError:
            raise CirlabError(f"fusion-diff:{arg}: option {key}={value!r} is not a {_TYPES[key].__name__}") from None
    return path, overrides


def load_spec(arg: str, backbone: Backbone) -> tuple[FusionDiffCheckpoint, SamplingConfig, str]:
    """The argument of ``fusion-diff:ARG`` -> (checkpoint, sampling settings with the overrides, directory)."""
    path, overrides = parse_spec_arg(arg)
    ck = load_fusion_diff(path, backbone)
    sampling = replace(ck.sampling, **overrides)
    if sampling.mix > 0 and ck.pipeline.fusion is None:
        raise CirlabError(f"fusion-diff:{arg}: mix={sampling.mix} needs a fused feature, but {path} is a stage-1 "
                          f"(prior-only) checkpoint")
    return ck, sampling, path


class FusionDiffMethod(Method):
    name = KIND
    expensive = True  # diffusion sampling per query

    def __init__(self, backbone: Backbone, checkpoint: FusionDiffCheckpoint, sampling: SamplingConfig,
                 source: str = "") -> None:
        super().__init__(backbone)
        self.checkpoint = checkpoint
        self.pipeline = checkpoint.pipeline.eval()
        self.sampling = sampling
        self.source = source

    @torch.no_grad()
    def compose(self, batch: QueryBatch) -> torch.Tensor:
        text = self.encode_texts(batch.texts)
        gen, fused = self.pipeline.generate(batch.reference_features.float(), text, self.sampling)
        if fused is None or self.sampling.mix == 0:
            return gen
        return F.normalize((1 - self.sampling.mix) * gen + self.sampling.mix * fused, dim=-1)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.source, "sampling": asdict(self.sampling),
                "stage": 2 if self.pipeline.adapter is not None else 1, "trained_on": self.checkpoint.backbone}


class FusionDiffGenerator:
    """Proxy generator (kind "embedding"): the generated target embedding, for CIG / IP-CIR."""

    kind = "embedding"
    needs_pixels = False

    def __init__(self, backbone: Backbone, checkpoint: FusionDiffCheckpoint, sampling: SamplingConfig,
                 source: str = "") -> None:
        self.backbone, self.checkpoint, self.sampling, self.source = backbone, checkpoint, sampling, source
        self.pipeline = checkpoint.pipeline.eval()

    @torch.no_grad()
    def generate(self, batch: QueryBatch, seed: int = 0) -> torch.Tensor:
        text = self.backbone.encode_texts(list(batch.texts))
        gen, _ = self.pipeline.generate(batch.reference_features.float(), text, self.sampling,
                                        seed=self.sampling.seed + seed)
        return gen

    def config(self) -> dict[str, Any]:
        return {"name": KIND, "checkpoint": self.source, "sampling": asdict(self.sampling)}


@METHODS.register(KIND)
def _fusion_diff(arg: str, backbone: Backbone) -> Method:
    ck, sampling, path = load_spec(arg, backbone)
    return FusionDiffMethod(backbone, ck, sampling, path)


@PROXY_GENERATORS.register(KIND, help="Fusion-Diff generated target embedding; fusion-diff:CKPT_DIR[,steps=...]")
def _fusion_diff_generator(arg: str, backbone: Backbone) -> FusionDiffGenerator:
    ck, sampling, path = load_spec(arg, backbone)
    return FusionDiffGenerator(backbone, ck, sampling, path)


__all__ = ["FusionDiffGenerator", "FusionDiffMethod", "load_spec", "parse_spec_arg"]
