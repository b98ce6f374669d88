"""The method protocol: (reference images, modification texts) -> query embeddings.

A method owns a backbone. ``compose`` returns L2-normalised queries in the
backbone's joint space, searched against the gallery's image features; a method
may also ``rescore`` the candidate list an index returns (any backend passes the
candidate ids, their scores and their stored features).

Raw features: a method that declares ``needs_raw = True`` (its learned module was
trained on raw projected CLIP features, as every official Pic2Word, SEARLE, LinCIR
and CLIP4Cir module was) gets ``QueryBatch.reference_norms`` filled by the retriever,
so ``batch.raw_reference_features`` is exactly the backbone's unnormalised feature.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..backbones.base import Backbone, ImageLike
from ..errors import CirlabError


@dataclass
class QueryBatch:
    """One batch of composed queries.

    ``reference_features`` are the references' image embeddings (usually read from the
    gallery index, so they are not encoded twice), L2-normalised; ``reference_norms`` the L2
    norms of their raw features (filled for methods with ``needs_raw``); ``reference_images``
    are paths/PIL images for methods that need pixels (patch tokens, generators).
    """

    texts: list[str]
    reference_features: torch.Tensor
    reference_images: Sequence[ImageLike] | None = None
    reference_ids: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reference_norms: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def raw_reference_features(self) -> torch.Tensor:
        """The references' raw projected image features (normalised feature x stored norm)."""
        if self.reference_norms is None:
            raise CirlabError("this query batch carries no raw-feature norms: the method must declare "
                              "needs_raw = True so the retriever fills them")
        return self.reference_features * self.reference_norms.to(self.reference_features).unsqueeze(-1)


def oracle_parts(config: Any) -> list[str]:
    """Why a method (its ``config()``) is an oracle: every ``"oracle"`` reason of any of its components.

    A component that reads the answer from the world's generator (its grammar, its renderer, the gallery's
    own captions) says so in its config; results that have one are upper bounds, kept out of rankings."""
    out: list[str] = []
    if isinstance(config, dict):
        if isinstance(config.get("oracle"), str):
            out.append(config["oracle"])
        for v in config.values():
            out += [r for r in oracle_parts(v) if r not in out]
    elif isinstance(config, (list, tuple)):
        for v in config:
            out += [r for r in oracle_parts(v) if r not in out]
    return out


class Method(nn.Module):
    """Base class: subclasses implement ``compose``; ``rescore`` defaults to keeping the index's scores."""

    name: str = ""
    #: whether ``compose`` needs ``reference_images`` (pixels) rather than only features
    needs_pixels: bool = False
    #: how many index candidates ``rescore`` re-ranks by default (0: the method does not re-score)
    rescore_depth: int = 0
    #: slow per query (an optimisation or a generation at query time): a server offers it only when it is
    #: listed explicitly, and runs it in a queue of its own so cheap queries never wait behind it
    expensive: bool = False
    #: whether ``compose`` reads ``batch.raw_reference_features`` (the retriever then fills the norms)
    needs_raw: bool = False

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def compose(self, batch: QueryBatch) -> torch.Tensor:
        raise NotImplementedError

    def rescore(self, batch: QueryBatch, queries: torch.Tensor, candidate_ids: list[list[str]],
                candidate_scores: torch.Tensor, candidate_features: torch.Tensor | None) -> torch.Tensor:
        return candidate_scores

    def config(self) -> dict[str, Any]:
        """Everything that changes this method's output (recorded in results files)."""
        return {"name": self.name}

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_texts(list(texts))
