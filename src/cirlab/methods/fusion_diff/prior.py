"""The diffusion prior: a denoiser over (scaled) image embeddings, conditioned on a text embedding.

DALL-E 2's prior maps a caption's text embedding to an image embedding by denoising;
here the denoiser is a stack of residual MLP blocks with adaptive layer norm (the
condition = timestep embedding + projected text embedding sets each block's scale and
shift). It predicts the clean embedding ``x0`` (DALL-E 2's choice) or the noise ``eps``.
Embeddings are L2-normalised and multiplied by ``scale`` (default ``sqrt(dim)``) so a
coordinate has roughly unit variance, like the noise.

``forward`` takes optional per-block ``residuals`` (B, width), added to the hidden
state after each block: this is where the Control-Adapter injects its signal.
A learned ``null_text`` replaces the text when it is dropped (classifier-free guidance).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CirlabError
from .scheduler import PREDICTIONS


@dataclass
class PriorConfig:
    dim: int                      # the backbone's embedding dimension
    width: int = 512              # hidden width of the blocks
    depth: int = 6                # residual blocks
    prediction: str = "x0"        # what the network predicts: "x0" or "eps"
    scale: float = 0.0            # embedding scale in the diffusion space; 0 = sqrt(dim)
    cond_dropout: float = 0.1     # training: probability of replacing the text by null_text

    def __post_init__(self) -> None:
        for name in ("dim", "width", "depth"):
            if int(getattr(self, name)) < 1:
                raise CirlabError(f"prior {name} must be >= 1, got {getattr(self, name)}")
        if self.prediction not in PREDICTIONS:
            raise CirlabError(f"prior prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise CirlabError(f"prior cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.scale <= 0:
            self.scale = math.sqrt(self.dim)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class AdaBlock(nn.Module):
    """``h + mlp(norm(h) * (1 + scale) + shift)`` with ``(scale, shift) = ada(silu(c))``; ``forward`` takes
    ``silu(c)`` (computed once per network evaluation and shared by every block)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.ada = nn.Linear(width, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, h: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada(c_act).chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class EmbeddingPrior(nn.Module):
    """(noisy embedding x_t, timestep t, text embedding) -> x0 or eps prediction, all (B, dim)."""

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.in_proj = nn.Linear(cfg.dim, w)
        self.text_proj = nn.Linear(cfg.dim, w)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.null_text = nn.Parameter(torch.zeros(cfg.dim))
        self.blocks = nn.ModuleList(AdaBlock(w) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, cfg.dim)

    def condition(self, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.time_mlp(timestep_embedding(t, self.cfg.width)) + self.text_proj(text)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                residuals: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if residuals is not None and len(residuals) != len(self.blocks):
            raise ValueError(f"prior: {len(residuals)} residuals for {len(self.blocks)} blocks")
        c = self.condition(t, text)
        h = self.in_proj(x_t) + c
        c_act = F.silu(c)
        for i, block in enumerate(self.blocks):
            h = block(h, c_act)
            if residuals is not None:
                h = h + residuals[i]
        return self.out(self.out_norm(h))

    def drop_text(self, text: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training: replace each row's text by ``null_text`` with probability ``cond_dropout``."""
        if self.cfg.cond_dropout <= 0:
            return text
        drop = torch.rand(len(text), generator=generator) < self.cfg.cond_dropout
        return torch.where(drop.to(text.device)[:, None], self.null_text.expand_as(text), text)

    def to_space(self, emb: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings -> the diffusion space (times ``scale``)."""
        return F.normalize(emb.float(), dim=-1) * self.cfg.scale


__all__ = ["AdaBlock", "EmbeddingPrior", "PriorConfig", "timestep_embedding"]
