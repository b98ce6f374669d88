"""What the Pic2Word, SEARLE and LinCIR importers share: an official mapping-network state dict ->
a cirlab ``pic2word:DIR`` / ``searle:DIR`` / ``lincir:DIR`` checkpoint.

The official modules are MLPs whose linear layers map one to one onto ``Phi.net``; the importer reads
the shapes off the state dict, renames the keys, loads them strictly (every key and shape must fit)
and writes the checkpoint with the official forward's choices: ``raw_input`` (phi takes the raw
projected image feature), the method's prompts and where its pseudo token lands (from its inference
preset), and the preset family, so benchmarks are queried as the authors did.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ...benchmarks.presets import get_preset
from ...errors import CirlabError
from ...methods.textual_inversion import Checkpoint, Phi, PhiConfig, PromptTemplates

#: the official image prompt of the three methods ("a photo of *" in Pic2Word's code)
IMAGE_PROMPT = "a photo of $"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def linear_shapes(state: dict[str, torch.Tensor], weights: list[str], path: Path) -> list[tuple[int, int]]:
    """(out, in) of each named linear weight, checking the layers chain (out of one = in of the next)."""
    shapes = []
    for k in weights:
        if k not in state:
            raise CirlabError(f"{path}: the state dict lacks {k!r} (has {sorted(state)[:8]})")
        w = state[k]
        if w.ndim != 2:
            raise CirlabError(f"{path}: {k} has shape {tuple(w.shape)}, expected a linear layer's (out, in)")
        shapes.append((int(w.shape[0]), int(w.shape[1])))
    for (o, _), (_, i), k in zip(shapes, shapes[1:], weights[1:]):
        if o != i:
            raise CirlabError(f"{path}: {k} takes {i} inputs but the layer before gives {o}")
    return shapes


def default_backbone(in_dim: int, backbones: dict[int, str], backbone: str | None, src: Path) -> str:
    """``backbone`` when given, else the official backbone for phi's input width."""
    if backbone:
        return backbone
    if in_dim not in backbones:
        raise CirlabError(f"{src}: phi takes {in_dim}-d features; no official backbone has that width "
                          f"(known: {sorted(backbones)}); pass backbone=SPEC")
    return backbones[in_dim]


def write_phi_checkpoint(method: str, family: str, state: dict[str, torch.Tensor], cfg: PhiConfig, src: Path,
                         out_dir: Path, backbone: str, source_format: str, extra: dict[str, Any] | None = None
                         ) -> Path:
    """Load ``state`` (cirlab ``Phi`` names) strictly into a ``Phi(cfg)`` and save the checkpoint."""
    phi = Phi(cfg)
    try:
        missing, unexpected = phi.load_state_dict({k: v.detach().float() for k, v in state.items()}, strict=False)
    except RuntimeError as e:  # a shape that does not fit
        raise CirlabError(f"{src}: the weights do not fit a {cfg.layers}-layer phi {cfg.in_dim} -> {cfg.hidden} -> "
                          f"{cfg.out_dim} ({' '.join(str(e).split())[:300]})") from None
    if missing or unexpected:
        raise CirlabError(f"{src}: the weights do not fit phi (missing {missing[:3]}, unexpected {unexpected[:3]})")
    preset = get_preset(family, "cirr")
    prompts = PromptTemplates(IMAGE_PROMPT, preset.query_template, preset.pseudo_at)
    training = {"imported_from": os.path.basename(src), "format": source_format, "sha256": file_sha256(src),
                **(extra or {})}
    ck = Checkpoint(method, phi.eval(), prompts, backbone, "", training, preset=family)
    return ck.save(out_dir)


__all__ = ["IMAGE_PROMPT", "default_backbone", "file_sha256", "linear_shapes", "write_phi_checkpoint"]
