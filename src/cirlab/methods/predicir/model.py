"""PrediCIR's two trained parts and their checkpoint.

- ``TargetPredictor`` (the world model): a transformer over one *action* token (the
  text feature of the caption at training time, of the modification text at query
  time) and one token per patch position: the source view's patch token where the
  patch is visible, a learned mask token where it is not (as in the I-JEPA / MAE
  predictors), each with a position embedding; its outputs are the predicted patch
  latents of the full target view (JEPA-style: trained to match the frozen
  backbone's patch tokens of the full image).
- ``AlignmentFusion`` (predictive cross-modal alignment): pools the predicted latents,
  fuses them with the source view's global image feature and maps the result to a
  pseudo-word token for ``"a photo of $ that {text}"``.

A checkpoint directory holds ``model.safetensors`` (both parts) and ``config.json``
(shapes, prompt templates, the backbone spec and weight fingerprint, training log).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...backbones.base import Backbone
from ...checkpoint import check_fingerprint, config_section, load_weights, read_checkpoint, save_checkpoint
from ...errors import CirlabError
from ..textual_inversion.prompts import PromptTemplates

METHOD = "predicir"


@dataclass
class PrediCIRConfig:
    vision_width: int   # width of the backbone's patch tokens
    grid: int           # patches per image side
    embed_dim: int      # joint space (action and global image features)
    token_dim: int      # text encoder token embeddings (the pseudo word)
    width: int = 128
    depth: int = 3
    heads: int = 4
    fuse_hidden: int = 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PrediCIRConfig:
        unknown = set(d) - set(PrediCIRConfig.__dataclass_fields__)
        if unknown:
            raise CirlabError(f"predicir model config: unknown field(s) {sorted(unknown)}")
        return PrediCIRConfig(**d)


class TargetPredictor(nn.Module):
    """(source patch tokens, visible mask, action feature) -> (B, N, vision_width) predicted target latents."""

    def __init__(self, c: PrediCIRConfig) -> None:
        super().__init__()
        n = c.grid * c.grid
        self.n = n
        self.source_in = nn.Linear(c.vision_width, c.width)
        self.action_in = nn.Linear(c.embed_dim, c.width)
        self.pos = nn.Parameter(torch.randn(1, n, c.width) * 0.02)
        self.kind = nn.Parameter(torch.randn(3, c.width) * 0.02)  # action / source / mask type embeddings
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.width))
        layer = nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.vision_width)

    def forward(self, source: torch.Tensor, visible: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        b, n, _ = source.shape
        if n != self.n:
            raise CirlabError(f"predicir: {n} source patch tokens, the predictor was built for {self.n}")
        act = (self.action_in(action) + self.kind[0]).unsqueeze(1)
        vis = visible.to(source.device).unsqueeze(-1)
        src = torch.where(vis, self.source_in(source) + self.kind[1], self.mask_token.expand(b, n, -1) + self.kind[2])
        x = self.ln(self.blocks(torch.cat([act, src + self.pos], 1)))
        return self.out(x[:, 1:])


class AlignmentFusion(nn.Module):
    """(predicted latents, source global feature) -> pseudo-word token (B, token_dim)."""

    def __init__(self, c: PrediCIRConfig) -> None:
        super().__init__()
        self.pool_query = nn.Parameter(torch.randn(c.vision_width) * 0.02)
        self.pred_proj = nn.Linear(c.vision_width, c.embed_dim)
        self.mlp = nn.Sequential(nn.Linear(2 * c.embed_dim, c.fuse_hidden), nn.GELU(),
                                 nn.Linear(c.fuse_hidden, c.fuse_hidden), nn.GELU(),
                                 nn.Linear(c.fuse_hidden, c.token_dim))

    def pooled(self, predicted: torch.Tensor) -> torch.Tensor:
        """Attention pooling of the predicted latents into one joint-space vector."""
        w = torch.softmax(predicted @ self.pool_query / predicted.shape[-1] ** 0.5, dim=1)
        return self.pred_proj((w.unsqueeze(-1) * predicted).sum(1))

    def forward(self, predicted: torch.Tensor, source_global: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([F.normalize(self.pooled(predicted), dim=-1),
                                   F.normalize(source_global, dim=-1)], -1))


class PrediCIRModel(nn.Module):
    def __init__(self, cfg: PrediCIRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.predictor = TargetPredictor(cfg)
        self.fusion = AlignmentFusion(cfg)

    def forward(self, source: torch.Tensor, visible: torch.Tensor, action: torch.Tensor,
                source_global: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (predicted target latents (B, N, vision_width), pseudo tokens (B, token_dim))."""
        pred = self.predictor(source, visible, action)
        return pred, self.fusion(pred, source_global)


def backbone_geometry(backbone: Backbone) -> tuple[int, int, int]:
    """(vision_width, grid, patch pixels) of ``backbone``, found by running one blank image."""
    from PIL import Image

    pixels = backbone.preprocess(Image.new("RGB", (64, 64), (128, 128, 128))).unsqueeze(0).to(backbone.device)
    with torch.no_grad():
        tokens = backbone.forward_image_tokens(pixels)
    n, width = tokens.shape[1], tokens.shape[2]
    grid = round(n ** 0.5)
    if grid * grid != n:
        raise CirlabError(f"predicir: backbone {backbone.spec!r} gives {n} patch tokens, not a square grid "
                          f"(forward_image_tokens must return patch tokens only)")
    side = pixels.shape[-1]
    if side % grid or pixels.shape[-2] != side:
        raise CirlabError(f"predicir: preprocessed images of {tuple(pixels.shape[-2:])} pixels do not split "
                          f"into a {grid}x{grid} patch grid")
    return width, grid, side // grid


def new_model(backbone: Backbone, width: int = 128, depth: int = 3, heads: int = 4, fuse_hidden: int = 512
              ) -> PrediCIRModel:
    vw, grid, _ = backbone_geometry(backbone)
    return PrediCIRModel(PrediCIRConfig(vw, grid, backbone.embed_dim, backbone.token_dim, width, depth, heads,
                                        fuse_hidden))


@dataclass
class PrediCIRCheckpoint:
    model: PrediCIRModel
    prompts: PromptTemplates
    backbone: str = ""
    fingerprint: str = ""
    patch: int = 8
    training: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        return save_checkpoint(directory, METHOD, {"model": self.model.cfg.to_dict(), "patch": self.patch,
                                                   "prompts": self.prompts.to_dict(), "backbone": self.backbone,
                                                   "fingerprint": self.fingerprint, "training": self.training},
                               self.model.state_dict())


def load_predicir(directory: str | os.PathLike[str] | None, backbone: Backbone | None = None
                  ) -> PrediCIRCheckpoint:
    d, cfg, state = read_checkpoint(directory, METHOD, "cirlab train predicir --data DIR --out {out}")
    mcfg = config_section(cfg, "model", PrediCIRConfig.from_dict, d)
    model = PrediCIRModel(mcfg)
    load_weights(model, state, d)
    ck = PrediCIRCheckpoint(model.eval(), PromptTemplates.from_dict(cfg.get("prompts", {})), cfg.get("backbone", ""),
                            cfg.get("fingerprint", ""), int(cfg.get("patch", 8)), cfg.get("training", {}))
    if backbone is not None:
        if (mcfg.embed_dim, mcfg.token_dim) != (backbone.embed_dim, backbone.token_dim):
            raise CirlabError(f"{d}: model built for embed_dim {mcfg.embed_dim}, token_dim {mcfg.token_dim}; "
                              f"backbone {backbone.spec!r} has {backbone.embed_dim}, {backbone.token_dim}")
        check_fingerprint(d, ck.backbone, ck.fingerprint, backbone)
    return ck


__all__ = ["AlignmentFusion", "PrediCIRCheckpoint", "PrediCIRConfig", "PrediCIRModel", "TargetPredictor",
           "backbone_geometry", "load_predicir", "new_model"]
