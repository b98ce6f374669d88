"""The Control-Adapter: a small trainable branch that injects the fused feature into the frozen prior.

ControlNet-style: the branch sees what the prior sees (noisy embedding, timestep) plus
the condition (the fused reference-image + text feature), runs a few residual MLP
layers, and emits one residual per prior block through a **zero-initialised** linear
projection. At initialisation every residual is exactly zero, so the prior's output is
unchanged and fine-tuning starts from the pre-trained prior's behaviour.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CirlabError
from .prior import timestep_embedding


@dataclass
class AdapterConfig:
    dim: int                  # embedding dimension (the fused feature's)
    prior_width: int          # width of the prior's blocks (the residuals' size)
    prior_depth: int          # number of prior blocks (one residual each)
    hidden: int = 256         # the branch's width
    layers: int = 2           # residual MLP layers in the branch

    def __post_init__(self) -> None:
        for name in ("dim", "prior_width", "prior_depth", "hidden", "layers"):
            if int(getattr(self, name)) < 1:
                raise CirlabError(f"adapter {name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ControlAdapter(nn.Module):
    """(fused, x_t, t) -> a list of ``prior_depth`` residuals (B, prior_width), zero at init."""

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.cond_in = nn.Linear(cfg.dim, h)
        self.x_in = nn.Linear(cfg.dim, h)
        self.time_in = nn.Linear(h, h)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 2 * h), nn.GELU(), nn.Linear(2 * h, h))
                                    for _ in range(cfg.layers))
        self.zero_proj = nn.ModuleList(nn.Linear(h, cfg.prior_width) for _ in range(cfg.prior_depth))
        self.reset_zero()

    def reset_zero(self) -> None:
        """Zero the output projections (weights and biases): the adapter then adds exactly nothing."""
        for proj in self.zero_proj:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, fused: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        h = self.cond_in(fused) + self.x_in(x_t) + self.time_in(timestep_embedding(t, self.cfg.hidden))
        for layer in self.layers:
            h = h + layer(h)
        h = F.silu(h)
        return [proj(h) for proj in self.zero_proj]


__all__ = ["AdapterConfig", "ControlAdapter"]
