"""The mapping network phi (image or text feature -> pseudo-word token) and its checkpoint format.

A checkpoint is a directory with ``model.safetensors`` (phi's weights) and
``config.json``: the method that trained it, phi's shape, the prompt templates,
the backbone spec and weight fingerprint it was trained on, and the training
settings. ``load_checkpoint`` checks all of it against the backbone in use.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ...backbones.base import Backbone
from ...checkpoint import check_fingerprint, config_section, load_weights, read_checkpoint, save_checkpoint
from ...errors import CirlabError
from .prompts import PromptTemplates

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class PhiConfig:
    in_dim: int
    out_dim: int
    hidden: int = 512
    layers: int = 3
    activation: str = "relu"
    dropout: float = 0.1
    #: phi takes the raw projected image feature (the official codes' input) instead of the normalised one
    raw_input: bool = False

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise CirlabError(f"phi activation {self.activation!r}: use one of {', '.join(ACTIVATIONS)}")
        if self.layers < 1:
            raise CirlabError(f"phi layers must be >= 1, got {self.layers}")


class Phi(nn.Module):
    """An MLP: ``layers`` linear layers with activation and dropout between them."""

    def __init__(self, cfg: PhiConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = [cfg.in_dim] + [cfg.hidden] * (cfg.layers - 1) + [cfg.out_dim]
        mods: list[nn.Module] = []
        for n, (a, b) in enumerate(zip(dims, dims[1:])):
            mods.append(nn.Linear(a, b))
            if n < len(dims) - 2:
                mods += [ACTIVATIONS[cfg.activation](), nn.Dropout(cfg.dropout)]
        self.net = nn.Sequential(*mods)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


@dataclass
class Checkpoint:
    method: str
    phi: Phi
    prompts: PromptTemplates
    backbone: str = ""
    fingerprint: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    #: by-products saved beside the weights in ``extra.safetensors`` (e.g. SEARLE's OTI tokens)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    #: the inference-preset family (``cirlab.benchmarks.presets``) benchmarks are queried with; "" for none
    preset: str = ""

    def save(self, directory: str | os.PathLike[str]) -> Path:
        cfg = {"phi": asdict(self.phi.cfg), "prompts": self.prompts.to_dict(), "backbone": self.backbone,
               "fingerprint": self.fingerprint, "training": self.training}
        if self.preset:
            cfg["preset"] = self.preset
        d = save_checkpoint(directory, self.method, cfg, self.phi.state_dict())
        if self.tensors:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in self.tensors.items()},
                      str(d / "extra.safetensors"))
        return d


def load_checkpoint(directory: str | os.PathLike[str] | None, method: str, backbone: Backbone | None = None
                    ) -> Checkpoint:
    """Read a checkpoint directory written by ``cirlab train method``; check it fits ``method`` and ``backbone``."""
    d, cfg, state = read_checkpoint(directory, method, f"cirlab train method {method} --data DIR --out {{out}}")
    phi = Phi(config_section(cfg, "phi", lambda c: PhiConfig(**c), d))
    load_weights(phi, state, d)
    prompts = config_section(cfg, "prompts", lambda c: PromptTemplates.from_dict(c or {}), d) \
        if "prompts" in cfg else PromptTemplates()
    ck = Checkpoint(method, phi.eval(), prompts, cfg.get("backbone", ""), cfg.get("fingerprint", ""),
                    cfg.get("training", {}), preset=str(cfg.get("preset", "")))
    if backbone is not None:
        check_backbone(ck, backbone, d)
    return ck


def check_backbone(ck: Checkpoint, backbone: Backbone, where: Path) -> None:
    c = ck.phi.cfg
    if c.in_dim != backbone.embed_dim or c.out_dim != backbone.token_dim:
        raise CirlabError(f"{where}: phi maps {c.in_dim} -> {c.out_dim} but backbone {backbone.spec!r} has "
                          f"embed_dim {backbone.embed_dim}, token_dim {backbone.token_dim} "
                          f"(trained on {ck.backbone!r})")
    check_fingerprint(where, ck.backbone, ck.fingerprint, backbone)
