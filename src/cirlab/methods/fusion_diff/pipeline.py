"""The sampling pipeline: prior + scheduler (+ fusion module + Control-Adapter) -> target embeddings.

``FusionDiffPipeline.generate(image, text)`` fuses the reference feature with the text
feature, then runs ``steps`` DDIM steps from Gaussian noise: at each step the adapter
turns (fused, x_t, t) into per-block residuals for the frozen prior, which is
conditioned on the text embedding. Without an adapter (a stage-1 checkpoint) it is a
plain text-to-image-embedding prior. Sampling draws its noise from a
``torch.Generator`` seeded with ``seed``, so it is repeatable.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CirlabError
from .adapter import ControlAdapter
from .fusion import FusionModule
from .prior import EmbeddingPrior
from .scheduler import DDIMScheduler


@dataclass
class SamplingConfig:
    steps: int = 10           # DDIM steps
    eta: float = 0.0          # 0: deterministic DDIM; 1: DDPM-like noise
    guidance: float = 1.0     # classifier-free guidance on the text (1 = none)
    samples: int = 1          # samples averaged per query
    seed: int = 0
    mix: float = 0.0          # query = normalize((1 - mix) * generated + mix * fused)

    def __post_init__(self) -> None:
        if int(self.steps) < 1:
            raise CirlabError(f"fusion-diff steps must be >= 1, got {self.steps}")
        if self.eta < 0:
            raise CirlabError(f"fusion-diff eta must be >= 0, got {self.eta}")
        if int(self.samples) < 1:
            raise CirlabError(f"fusion-diff samples must be >= 1, got {self.samples}")
        if not 0.0 <= self.mix <= 1.0:
            raise CirlabError(f"fusion-diff mix must be in [0, 1], got {self.mix}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FusionDiffPipeline(nn.Module):
    def __init__(self, prior: EmbeddingPrior, scheduler: DDIMScheduler, adapter: ControlAdapter | None = None,
                 fusion: FusionModule | None = None) -> None:
        super().__init__()
        self.prior, self.scheduler, self.adapter, self.fusion = prior, scheduler, adapter, fusion

    @property
    def dim(self) -> int:
        return self.prior.cfg.dim

    def fuse(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor | None:
        return self.fusion(image, text) if self.fusion is not None else None

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, fused: torch.Tensor | None,
                guidance: float = 1.0) -> torch.Tensor:
        """One network evaluation: the prior, with the adapter's residuals when there is a fused feature."""
        residuals = None
        if self.adapter is not None and fused is not None:
            residuals = self.adapter(self.prior.to_space(fused), x_t, t)
        out = self.prior(x_t, t, text, residuals)
        if guidance != 1.0:
            null = self.prior.null_text.expand_as(text)
            uncond = self.prior(x_t, t, null, residuals)
            out = uncond + guidance * (out - uncond)
        return out

    @torch.no_grad()
    def sample(self, text: torch.Tensor, fused: torch.Tensor | None = None, *, steps: int = 10, eta: float = 0.0,
               guidance: float = 1.0, seed: int = 0, samples: int = 1) -> torch.Tensor:
        """(B, dim) text features (+ fused features) -> (B, dim) L2-normalised generated embeddings."""
        device = self.prior.out.weight.device
        b, d = text.shape
        gen = torch.Generator().manual_seed(int(seed))
        text = text.float().to(device).repeat_interleave(samples, dim=0)
        if fused is not None:
            fused = fused.float().to(device).repeat_interleave(samples, dim=0)
        x = torch.randn((b * samples, d), generator=gen).to(device)
        for t in self.scheduler.set_timesteps(steps).tolist():
            tt = torch.full((len(x),), t, dtype=torch.long, device=device)
            out = self.denoise(x, tt, text, fused, guidance)
            x = self.scheduler.step(out, t, x, prediction=self.prior.cfg.prediction, eta=eta, generator=gen).prev_sample
        emb = F.normalize(x, dim=-1).view(b, samples, d).mean(1)
        return F.normalize(emb, dim=-1)

    @torch.no_grad()
    def generate(self, image: torch.Tensor, text: torch.Tensor, sampling: SamplingConfig,
                 seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(generated target embeddings, fused features or None), both L2-normalised (B, dim)."""
        fused = self.fuse(image.float(), text.float()) if self.fusion is not None else None
        gen = self.sample(text, fused, steps=sampling.steps, eta=sampling.eta, guidance=sampling.guidance,
                          seed=sampling.seed if seed is None else seed, samples=sampling.samples)
        return gen, fused


__all__ = ["FusionDiffPipeline", "SamplingConfig"]
