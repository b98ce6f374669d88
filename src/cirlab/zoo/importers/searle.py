"""SEARLE (Baldrati et al., ICCV 2023): the released phi -> a ``searle:DIR`` checkpoint.

The torch.hub release files ``SEARLE_ViT-B32.pt`` and ``SEARLE_ViT-L14.pt`` are ``torch.save`` dicts
read as ``["Phi"]``: ``layers`` = [Linear d -> 4d, GELU, Dropout(0.5), Linear 4d -> 4d, GELU,
Dropout(0.5), Linear 4d -> d_token] (keys ``layers.{0,3,6}``), the same layout as ``Phi.net``; B/32
512 / 2048 / 512, L/14 768 / 3072 / 768. The backbone follows from the input width (B/32 or L/14
CLIP, with SEARLE's TargetPad preprocessing). LinCIR's ``lincir.py`` reuses ``convert_phi``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ...errors import CirlabError
from ...methods.textual_inversion import PhiConfig
from ..safe_load import load_weights_only, state_dict_at
from . import IMPORTERS
from .phi import default_backbone, linear_shapes, write_phi_checkpoint

KEY = "Phi"
DROPOUT = 0.5
#: CLIP embedding width -> the backbone SEARLE evaluates with (TargetPad, ratio 1.25)
BACKBONES = {512: "hf:openai/clip-vit-base-patch32,preprocess=targetpad",
             768: "hf:openai/clip-vit-large-patch14,preprocess=targetpad"}
_LAYER = re.compile(r"layers\.(\d+)\.(weight|bias)")


def phi_state(src: Path) -> dict[str, torch.Tensor]:
    """The phi state dict of a SEARLE/LinCIR file: ``obj["Phi"]``, or the file itself when it is one."""
    obj = load_weights_only(src)
    key = KEY if isinstance(obj, dict) and KEY in obj else None
    return state_dict_at(obj, key, src)


def convert_phi(src: Path, out_dir: Path, method: str, family: str, backbones: dict[int, str],
                backbone: str | None, source_format: str) -> Path:
    state = phi_state(src)
    idx = sorted({int(m.group(1)) for k in state if (m := _LAYER.fullmatch(k))})
    bad = [k for k in state if not _LAYER.fullmatch(k)]
    if bad or not idx or idx != [3 * i for i in range(len(idx))]:
        raise CirlabError(f"{src}: not a SEARLE-style phi (expected keys layers.0, layers.3, layers.6 ...; "
                          f"found {sorted(state)[:8]})")
    shapes = linear_shapes(state, [f"layers.{i}.weight" for i in idx], src)
    in_dim = shapes[0][1]
    backbone = default_backbone(in_dim, backbones, backbone, src)
    cfg = PhiConfig(in_dim=in_dim, out_dim=shapes[-1][0], hidden=shapes[0][0], layers=len(idx), activation="gelu",
                    dropout=DROPOUT, raw_input=True)
    mapped = {k.replace("layers.", "net.", 1): v for k, v in state.items()}
    return write_phi_checkpoint(method, family, mapped, cfg, src, out_dir, backbone, source_format)


@IMPORTERS.register("searle", help="SEARLE torch.hub phi (SEARLE_ViT-B32.pt, SEARLE_ViT-L14.pt; ['Phi']) -> searle:DIR")
def convert(src: Path, out_dir: Path, backbone: str | None = None) -> Path:
    return convert_phi(src, out_dir, "searle", "searle", BACKBONES, backbone, f"SEARLE torch.save dict, key {KEY!r}")


__all__ = ["BACKBONES", "convert", "convert_phi", "phi_state"]
