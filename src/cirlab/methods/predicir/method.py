"""The registered method ``predicir:CHECKPOINT_DIR``.

At query time the whole reference image is the source view (every patch visible),
the modification text is the action; the predictor imagines the target's patch
latents, the fusion turns them and the reference feature into a pseudo word, and
the query is the text feature of ``"a photo of $ that {text}"`` with that word.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...backbones.base import Backbone
from ...errors import CirlabError
from .. import METHODS
from ..base import Method, QueryBatch
from .model import PrediCIRCheckpoint, load_predicir


class PrediCIRMethod(Method):
    name = "predicir"
    needs_pixels = True

    def __init__(self, backbone: Backbone, checkpoint: PrediCIRCheckpoint, source: str = "") -> None:
        super().__init__(backbone)
        self.checkpoint = checkpoint
        self.model = checkpoint.model.to(backbone.device).eval()
        self.prompts = checkpoint.prompts
        self.source = source

    def imagine(self, batch: QueryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (predicted target latents (B, N, W), pseudo tokens (B, token_dim))."""
        if batch.reference_images is None:
            raise CirlabError("predicir needs the reference images (pixels) in the query batch")
        dev = self.backbone.device
        pixels = self.backbone.preprocess_batch(batch.reference_images).to(dev)
        with torch.no_grad():
            tokens = self.backbone.forward_image_tokens(pixels)
        visible = torch.ones(tokens.shape[:2], dtype=torch.bool, device=dev)
        action = self.backbone.encode_texts(batch.texts).to(dev)
        ref = F.normalize(batch.reference_features.float().to(dev), dim=-1)
        return self.model(tokens.float(), visible, action, ref)

    def compose(self, batch: QueryBatch) -> torch.Tensor:
        _, pseudo = self.imagine(batch)
        texts = [self.prompts.query_prompt(t, self.backbone.placeholder) for t in batch.texts]
        tokens = {k: v.to(self.backbone.device) for k, v in self.backbone.tokenize(texts).items()}
        return self.backbone.forward_texts_pseudo(tokens, pseudo).float()

    def config(self) -> dict[str, Any]:
        ck = self.checkpoint
        return {"name": self.name, "checkpoint": self.source, "prompts": self.prompts.to_dict(),
                "model": ck.model.cfg.to_dict(), "trained_on": ck.backbone,
                "training": {k: v for k, v in ck.training.items() if k != "log"}}


@METHODS.register("predicir")
def _predicir(arg: str, backbone: Backbone) -> Method:
    return PrediCIRMethod(backbone, load_predicir(arg, backbone), arg)
