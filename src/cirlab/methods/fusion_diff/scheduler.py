"""A DDIM scheduler over embedding vectors, kept apart from the denoiser (diffusers-style).

The forward process is ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with ``a_t`` the
cumulative product of ``1 - beta``. Sampling visits ``n`` timesteps from ``T - 1`` down to 0
(``round(linspace(T - 1, 0, n))``, "trailing" spacing, so even one step starts from pure
noise; ``spacing="leading"`` gives diffusers' ``k * (T // n)``); one DDIM step from ``t`` to
the next visited timestep ``p`` (``-1`` after the last) is

    x0  = model x0-prediction (or (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) from an eps-prediction)
    eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)
    sigma = eta * sqrt((1 - a_p) / (1 - a_t)) * sqrt(1 - a_t / a_p)
    x_p = sqrt(a_p) x0 + sqrt(1 - a_p - sigma^2) eps + sigma z

with ``a_p = 1`` below the first timestep, so ``eta = 0`` is deterministic.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ...errors import CirlabError

PREDICTIONS = ("x0", "eps")
BETA_SCHEDULES = ("cosine", "linear")
SPACINGS = ("trailing", "leading")


@dataclass
class DDIMConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "cosine"     # "cosine" (squared-cosine, as DALL-E 2's prior) or "linear"
    beta_start: float = 1e-4          # linear schedule only
    beta_end: float = 0.02            # linear schedule only
    spacing: str = "trailing"         # inference timesteps: "trailing" (T-1 ... 0) or "leading" (k * T // n)

    def __post_init__(self) -> None:
        if int(self.num_train_timesteps) < 2:
            raise CirlabError(f"ddim num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise CirlabError(f"ddim beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.spacing not in SPACINGS:
            raise CirlabError(f"ddim spacing must be one of {SPACINGS}, got {self.spacing!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)], dtype=torch.float64)


@dataclass
class StepOutput:
    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


class DDIMScheduler:
    """Noise schedule, ``add_noise`` for training and the DDIM ``step`` for sampling."""

    def __init__(self, cfg: DDIMConfig | None = None) -> None:
        self.cfg = cfg or DDIMConfig()
        n = self.cfg.num_train_timesteps
        if self.cfg.beta_schedule == "cosine":
            betas = cosine_betas(n)
        else:
            betas = torch.linspace(self.cfg.beta_start, self.cfg.beta_end, n, dtype=torch.float64)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.set_timesteps(n)

    @property
    def num_train_timesteps(self) -> int:
        return self.cfg.num_train_timesteps

    def set_timesteps(self, steps: int) -> torch.Tensor:
        n = self.num_train_timesteps
        if not 1 <= steps <= n:
            raise CirlabError(f"ddim: inference steps must be in [1, {n}], got {steps}")
        self.num_inference_steps = steps
        if self.cfg.spacing == "leading":
            self.timesteps = (torch.arange(steps) * (n // steps)).flip(0)
        else:
            self.timesteps = torch.linspace(n - 1, 0, steps, dtype=torch.float64).round().long()
        seq = self.timesteps.tolist()
        self._prev = dict(zip(seq, seq[1:] + [-1]))
        return self.timesteps

    def prev_timestep(self, t: int) -> int:
        """The timestep after ``t`` in the current inference sequence (-1 after the last)."""
        try:
            return self._prev[int(t)]
        except KeyError:
            raise CirlabError(f"ddim: timestep {t} is not in the inference sequence {self.timesteps.tolist()} "
                              f"(call set_timesteps first)") from None

    def _abar(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def split(self, model_output: torch.Tensor, t: int, sample: torch.Tensor, prediction: str
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by the model's output at timestep ``t``."""
        a = self._abar(t)
        if prediction == "x0":
            x0 = model_output
            eps = (sample - math.sqrt(a) * x0) / math.sqrt(1 - a)
        elif prediction == "eps":
            eps = model_output
            x0 = (sample - math.sqrt(1 - a) * eps) / math.sqrt(a)
        else:
            raise CirlabError(f"ddim: prediction must be one of {PREDICTIONS}, got {prediction!r}")
        return x0, eps

    def step(self, model_output: torch.Tensor, t: int, sample: torch.Tensor, *, prediction: str = "x0",
             eta: float = 0.0, generator: torch.Generator | None = None) -> StepOutput:
        t = int(t)
        prev = self.prev_timestep(t)
        a_t, a_p = self._abar(t), self._abar(prev)
        x0, eps = self.split(model_output, t, sample, prediction)
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(max(0.0, 1 - a_t / a_p))
        prev_sample = math.sqrt(a_p) * x0 + math.sqrt(max(0.0, 1 - a_p - sigma ** 2)) * eps
        if eta > 0 and sigma > 0:
            z = torch.randn(sample.shape, generator=generator, dtype=sample.dtype).to(sample.device)
            prev_sample = prev_sample + sigma * z
        return StepOutput(prev_sample, x0)


__all__ = ["BETA_SCHEDULES", "PREDICTIONS", "SPACINGS", "DDIMConfig", "DDIMScheduler", "StepOutput", "cosine_betas"]
