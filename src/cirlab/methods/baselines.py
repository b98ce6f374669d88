"""Classic baselines over a frozen backbone: image-only, text-only, sum, weighted average."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from . import METHODS
from .base import Method, QueryBatch


class ImageOnly(Method):
    name = "image"

    def compose(self, batch: QueryBatch) -> torch.Tensor:
        return F.normalize(batch.reference_features.float(), dim=-1)


class TextOnly(Method):
    name = "text"

    def compose(self, batch: QueryBatch) -> torch.Tensor:
        return self.encode_texts(batch.texts)


class WeightedAverage(Method):
    """``normalize((1 - w) * image + w * text)``; ``sum`` is ``w = 0.5``."""

    name = "weighted"

    def __init__(self, backbone: Backbone, weight: float = 0.5) -> None:
        super().__init__(backbone)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weighted: text weight must be in [0, 1], got {weight}")
        self.weight = weight

    def compose(self, batch: QueryBatch) -> torch.Tensor:
        img = F.normalize(batch.reference_features.float(), dim=-1)
        txt = self.encode_texts(batch.texts)
        return F.normalize((1 - self.weight) * img + self.weight * txt, dim=-1)

    def config(self) -> dict:
        return {"name": self.name, "weight": self.weight}


class Sum(WeightedAverage):
    name = "sum"

    def __init__(self, backbone: Backbone) -> None:
        super().__init__(backbone, 0.5)

    def config(self) -> dict:
        return {"name": self.name}


@METHODS.register("image")
def _image(arg: str, backbone: Backbone) -> Method:
    return ImageOnly(backbone)


@METHODS.register("text")
def _text(arg: str, backbone: Backbone) -> Method:
    return TextOnly(backbone)


@METHODS.register("sum")
def _sum(arg: str, backbone: Backbone) -> Method:
    return Sum(backbone)


@METHODS.register("weighted")
def _weighted(arg: str, backbone: Backbone) -> Method:
    try:
        w = float(arg) if arg else 0.6
    except ValueError:
        raise ValueError(f"weighted:{arg}: the text weight must be a number, e.g. weighted:0.7") from None
    return WeightedAverage(backbone, w)
