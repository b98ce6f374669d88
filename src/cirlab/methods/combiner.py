"""The Combiner (CLIP4Cir-style supervised fusion) over a frozen backbone's features.

The query is ``normalize(out(fused) + g * text + (1 - g) * image)``: both features are
projected (linear + ReLU + dropout), concatenated, passed through a hidden layer
(``out``) and a gate ``g`` in (0, 1) computed from the same concatenation mixes the
raw features back in. A learnable temperature (``logit_scale = log(1 / T)``) scales
the cosine logits of the contrastive loss. The model sees only cached features, so it
trains in seconds on CPU (``cirlab.train.supervised``).

CLIP4Cir's own Combiner is the same network with three choices fixed differently, all
options of ``CombinerConfig``: the projections are concatenated as (text, image)
(``order="text-image"``), the logit scale is a constant 100 (``fixed_scale=100``), and the
inputs are the backbone's raw projected features, not L2-normalised ones
(``raw_input=True``; the method then asks for raw reference features, ``needs_raw``).
``cirlab.zoo.importers.clip4cir`` converts its released checkpoint into this format.

A checkpoint directory holds ``model.safetensors`` + ``config.json`` (the Combiner's
shape, the backbone spec and weight fingerprint it was trained on, the training log);
use it as the method ``combiner:DIR``.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..checkpoint import check_fingerprint, config_section, load_weights, read_checkpoint, save_checkpoint
from ..errors import CirlabError
from . import METHODS
from .base import Method, QueryBatch

KIND = "combiner"


@dataclass
class CombinerConfig:
    dim: int                      # the backbone's embedding dimension
    projection: int = 512         # width of the image / text projections
    hidden: int = 1024            # width of the fusion layer
    dropout: float = 0.2
    temperature: float = 0.07     # initial temperature of the contrastive logits (learnable)
    order: str = "image-text"     # concatenation order of the projections ("text-image": CLIP4Cir's)
    fixed_scale: float | None = None  # a constant logit scale instead of the learnable one (CLIP4Cir: 100)
    raw_input: bool = False       # take raw projected features (CLIP4Cir) instead of L2-normalised ones

    def __post_init__(self) -> None:
        for name in ("dim", "projection", "hidden"):
            if int(getattr(self, name)) < 1:
                raise CirlabError(f"combiner {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise CirlabError(f"combiner dropout must be in [0, 1), got {self.dropout}")
        if self.temperature <= 0:
            raise CirlabError(f"combiner temperature must be > 0, got {self.temperature}")
        if self.order not in ORDERS:
            raise CirlabError(f"combiner order {self.order!r}: use one of {', '.join(ORDERS)}")
        if self.fixed_scale is not None and self.fixed_scale <= 0:
            raise CirlabError(f"combiner fixed_scale must be > 0, got {self.fixed_scale}")


ORDERS = ("image-text", "text-image")


class Combiner(nn.Module):
    """(image features, text features) -> composed query features, all (B, dim); output L2-normalised."""

    def __init__(self, cfg: CombinerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, h = cfg.projection, cfg.hidden
        self.image_proj = nn.Linear(cfg.dim, p)
        self.text_proj = nn.Linear(cfg.dim, p)
        self.fuse = nn.Linear(2 * p, h)
        self.out = nn.Linear(h, cfg.dim)
        self.gate = nn.Sequential(nn.Linear(2 * p, h), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(h, 1))
        self.drop = nn.Dropout(cfg.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image, text = image.float(), text.float()
        if not self.cfg.raw_input:
            image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        pi = self.drop(F.relu(self.image_proj(image)))
        pt = self.drop(F.relu(self.text_proj(text)))
        both = torch.cat([pt, pi] if self.cfg.order == "text-image" else [pi, pt], dim=-1)
        fused = self.out(self.drop(F.relu(self.fuse(both))))
        g = torch.sigmoid(self.gate(both))
        return F.normalize(fused + g * text + (1 - g) * image, dim=-1)

    def scale(self) -> torch.Tensor:
        """``fixed_scale`` when set; else exp(logit_scale), clamped to at most 100 (temperature >= 0.01) as in CLIP."""
        if self.cfg.fixed_scale is not None:
            return torch.tensor(float(self.cfg.fixed_scale), device=self.logit_scale.device)
        return self.logit_scale.clamp(max=math.log(100.0)).exp()


@dataclass
class CombinerCheckpoint:
    model: Combiner
    backbone: str = ""
    fingerprint: str = ""
    training: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        return save_checkpoint(directory, KIND, {"combiner": asdict(self.model.cfg), "backbone": self.backbone,
                                                 "fingerprint": self.fingerprint, "training": self.training},
                               self.model.state_dict())


def load_combiner(directory: str | os.PathLike[str] | None, backbone: Backbone | None = None) -> CombinerCheckpoint:
    """Read a checkpoint written by ``cirlab train combiner``; check it fits ``backbone``."""
    d, cfg, state = read_checkpoint(directory, KIND, "cirlab train combiner --real DIR --out {out}")
    ccfg = config_section(cfg, "combiner", lambda c: CombinerConfig(**c), d)
    model = Combiner(ccfg)
    load_weights(model, state, d)
    ck = CombinerCheckpoint(model.eval(), cfg.get("backbone", ""), cfg.get("fingerprint", ""), cfg.get("training", {}))
    if backbone is not None:
        if ccfg.dim != backbone.embed_dim:
            raise CirlabError(f"{d}: combiner dim {ccfg.dim} != embed_dim {backbone.embed_dim} of backbone "
                              f"{backbone.spec!r} (trained on {ck.backbone!r})")
        check_fingerprint(d, ck.backbone, ck.fingerprint, backbone)
    return ck


class CombinerMethod(Method):
    name = KIND

    def __init__(self, backbone: Backbone, checkpoint: CombinerCheckpoint, source: str = "") -> None:
        super().__init__(backbone)
        self.checkpoint = checkpoint
        self.combiner = checkpoint.model.eval()
        self.source = source
        self.needs_raw = bool(self.combiner.cfg.raw_input)

    @torch.no_grad()
    def compose(self, batch: QueryBatch) -> torch.Tensor:
        if self.needs_raw:
            return self.combiner(batch.raw_reference_features.float(),
                                 self.backbone.encode_texts(list(batch.texts), normalize=False))
        return self.combiner(batch.reference_features.float(), self.encode_texts(batch.texts))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.source, "combiner": asdict(self.combiner.cfg),
                "trained_on": self.checkpoint.backbone,
                "training": {k: v for k, v in self.checkpoint.training.items() if k != "log"}}


@METHODS.register(KIND)
def _combiner(arg: str, backbone: Backbone) -> Method:
    return CombinerMethod(backbone, load_combiner(arg, backbone), arg)
