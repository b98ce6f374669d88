"""DRSP: distribution-robust synthetic pre-training by perturbing visual feature statistics.

Synthetic images differ from real ones in their feature *statistics*. DRSP treats the
per-batch mean ``mu`` and standard deviation ``sigma`` of the visual features (per
dimension, over the batch) as uncertain: each is a Gaussian centred on its estimate
with the estimate's sampling standard error,

    Sigma_mu = sigma / sqrt(B),    Sigma_sigma = sigma / sqrt(2 (B - 1)),

and each batch draws new statistics by reparameterisation (``eps ~ N(0, 1)``, one draw per
dimension, shared by the batch's samples):

    mu~ = mu + s * eps_1 * Sigma_mu,   sigma~ = sigma + s * eps_2 * Sigma_sigma,
    v~  = sigma~ * (v - mu) / sigma + mu~,

with strength ``s``: the batch is re-standardised to the drawn statistics, so its mean is ``mu~``
and its std ``sigma~`` (kept in expectation: ``E[mu~] = mu``, ``E[sigma~] = sigma``); ``E[v~] = v`` and
``Var[v~] = s^2 (Sigma_mu^2 + z^2 Sigma_sigma^2)`` with ``z = (v - mu) / sigma``. ``v~``
replaces ``v`` for the alignment loss during training only: in ``eval()`` mode (and
at inference) the module is the identity, so it costs nothing there.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class DRSP(nn.Module):
    """Feature-statistics perturbation; ``strength = 0`` or ``eval()`` mode is the identity."""

    def __init__(self, strength: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        if strength < 0:
            raise ValueError(f"DRSP strength must be >= 0, got {strength}")
        self.strength = float(strength)
        self.eps = eps

    @staticmethod
    def statistics(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, sigma, Sigma_mu, Sigma_sigma), each (D,), of a (B, D) batch."""
        b = v.shape[0]
        mu = v.mean(0)
        sigma = v.std(0, unbiased=True) if b > 1 else torch.zeros_like(mu)
        return mu, sigma, sigma / math.sqrt(b), sigma / math.sqrt(2 * max(b - 1, 1))

    def forward(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training or self.strength == 0 or v.shape[0] < 2:
            return v
        mu, sigma, s_mu, s_sigma = self.statistics(v.detach())
        e1 = torch.randn(v.shape[1:], generator=generator, device=v.device, dtype=v.dtype)
        e2 = torch.randn(v.shape[1:], generator=generator, device=v.device, dtype=v.dtype)
        new_mu = mu + self.strength * e1 * s_mu
        new_sigma = sigma + self.strength * e2 * s_sigma
        return new_sigma * (v - mu) / (sigma + self.eps) + new_mu

    def extra_repr(self) -> str:
        return f"strength={self.strength}"


__all__ = ["DRSP"]
