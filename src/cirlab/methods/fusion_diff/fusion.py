"""The fusion module: (reference image feature, modification text feature) -> one fused feature.

The paper obtains its fused feature from an MLLM that reads the image and the text
together. Over a frozen two-tower backbone we learn it: both features are projected,
a hidden layer mixes them (with their elementwise product, so the text can act on the
image's coordinates), and a learned gate blends the result with the raw features:
``fused = normalize(g * text + (1 - g) * image + mix(...))``. The output lives in the
backbone's joint space (L2-normalised), so it can be searched directly and plotted
against image and text embeddings.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CirlabError


@dataclass
class FusionConfig:
    dim: int                  # the backbone's embedding dimension
    hidden: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("dim", "hidden"):
            if int(getattr(self, name)) < 1:
                raise CirlabError(f"fusion {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise CirlabError(f"fusion dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FusionModule(nn.Module):
    """(image (B, dim), text (B, dim)) -> fused (B, dim), L2-normalised."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h = cfg.dim, cfg.hidden
        self.mix = nn.Sequential(nn.Linear(3 * d, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, h), nn.GELU(),
                                 nn.Linear(h, d))
        self.gate = nn.Sequential(nn.Linear(2 * d, h // 4 or 1), nn.GELU(), nn.Linear(h // 4 or 1, 1))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image = F.normalize(image.float(), dim=-1)
        text = F.normalize(text.float(), dim=-1)
        g = torch.sigmoid(self.gate(torch.cat([image, text], dim=-1)))
        delta = self.mix(torch.cat([image, text, image * text], dim=-1))
        return F.normalize(g * text + (1 - g) * image + delta, dim=-1)


__all__ = ["FusionConfig", "FusionModule"]
