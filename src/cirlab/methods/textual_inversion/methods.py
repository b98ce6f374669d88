"""Registered pseudo-word methods: ``pic2word:DIR``, ``searle:DIR``, ``lincir:DIR``, ``searle-oti[:STEPS]``.

Each composes the query as the text feature of the query template ("a photo of $ that
{text}") with ``$`` replaced by a pseudo-word token computed from the reference's
image feature: by a trained mapping network phi (Pic2Word, SEARLE-phi, LinCIR), or
by optimising a token per reference at query time (SEARLE-OTI).

phi's input: the L2-normalised image feature for checkpoints trained by cirlab so far,
or the raw projected feature when its config says ``raw_input`` (as the official
Pic2Word, SEARLE and LinCIR code feed it, and as imported official checkpoints are
configured); the method then declares ``needs_raw`` so the retriever fills the norms.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...backbones.base import Backbone
from ...errors import CirlabError
from .. import METHODS
from ..base import Method, QueryBatch
from .concepts import ConceptVocabulary
from .oti import OTI, OTIConfig
from .phi import Checkpoint, load_checkpoint
from .prompts import PromptTemplates


class PseudoWordMethod(Method):
    """Base: ``pseudo_tokens(features)`` gives one token per query; compose encodes the query prompts."""

    prompts: PromptTemplates

    def pseudo_tokens(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def query_texts(self, texts: list[str]) -> list[str]:
        return [self.prompts.query_prompt(t, self.backbone.placeholder) for t in texts]

    def input_features(self, batch: QueryBatch) -> torch.Tensor:
        """What ``pseudo_tokens`` takes: the raw features when the method ``needs_raw``, else normalised ones."""
        if self.needs_raw:
            return batch.raw_reference_features.float().to(self.backbone.device)
        return F.normalize(batch.reference_features.float().to(self.backbone.device), dim=-1)

    def compose(self, batch: QueryBatch) -> torch.Tensor:
        dev = self.backbone.device
        pseudo = self.pseudo_tokens(self.input_features(batch))
        tokens = {k: v.to(dev) for k, v in self.backbone.tokenize(self.query_texts(batch.texts)).items()}
        return self.backbone.forward_texts_pseudo(tokens, pseudo.to(dev), first_only=self.prompts.first_only).float()


class PhiMethod(PseudoWordMethod):
    """A pseudo-word method whose tokens come from a trained mapping network."""

    def __init__(self, backbone: Backbone, checkpoint: Checkpoint, source: str = "") -> None:
        super().__init__(backbone)
        self.name = checkpoint.method
        self.checkpoint = checkpoint
        self.phi = checkpoint.phi.to(backbone.device).eval()
        self.prompts = checkpoint.prompts
        self.source = source
        self.needs_raw = checkpoint.phi.cfg.raw_input
        self.preset = checkpoint.preset

    def pseudo_tokens(self, features: torch.Tensor) -> torch.Tensor:
        return self.phi(features.to(next(self.phi.parameters()).dtype))

    def config(self) -> dict[str, Any]:
        ck = self.checkpoint
        return {"name": self.name, "checkpoint": self.source, "prompts": self.prompts.to_dict(),
                "raw_input": self.needs_raw, "preset": self.preset, "trained_on": ck.backbone,
                "training": ck.training}


class SearleOTI(PseudoWordMethod):
    """SEARLE-OTI: optimise a token for each reference at query time (no training; slow)."""

    name = "searle-oti"
    expensive = True  # an optimisation per query

    def __init__(self, backbone: Backbone, cfg: OTIConfig | None = None, prompts: PromptTemplates | None = None,
                 vocab: ConceptVocabulary | None = None) -> None:
        super().__init__(backbone)
        self.cfg = cfg or OTIConfig()
        self.prompts = prompts or PromptTemplates()
        self.vocab = vocab
        self._oti: OTI | None = None

    @property
    def oti(self) -> OTI:
        if self._oti is None:
            self.vocab = self.vocab or ConceptVocabulary.for_backbone(self.backbone)
            self._oti = OTI(self.backbone, self.vocab, self.prompts, self.cfg)
        return self._oti

    def pseudo_tokens(self, features: torch.Tensor) -> torch.Tensor:
        return self.oti.optimise(features)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "prompts": self.prompts.to_dict(), "oti": self.cfg.to_dict(),
                "concepts": len(self.oti.reg.vocab)}


def _phi_factory(method: str):
    def factory(arg: str, backbone: Backbone) -> Method:
        return PhiMethod(backbone, load_checkpoint(arg, method, backbone), arg)
    return factory


for _name in ("pic2word", "searle", "lincir"):
    METHODS.register(_name)(_phi_factory(_name))


@METHODS.register("searle-oti")
def _searle_oti(arg: str, backbone: Backbone) -> Method:
    cfg = OTIConfig()
    if arg:
        try:
            cfg.steps = int(arg)
        except ValueError:
            raise CirlabError(f"searle-oti:{arg}: the argument is the number of OTI steps, e.g. searle-oti:100"
                              ) from None
        if cfg.steps < 1:
            raise CirlabError(f"searle-oti:{arg}: the number of steps must be >= 1")
    return SearleOTI(backbone, cfg)
