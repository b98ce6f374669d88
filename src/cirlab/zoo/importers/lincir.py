"""LinCIR (Gu et al., CVPR 2024): the released ``lincir_large.pt`` -> a ``lincir:DIR`` checkpoint.

LinCIR's phi has SEARLE's layout (hidden 4d, GELU, dropout 0.5; keys ``layers.{0,3,6}``) and its file
is read as ``["Phi"]`` like SEARLE's. LinCIR evaluates with the HF ``CLIPImageProcessor`` (no TargetPad)
and replaces every ``$`` of a prompt by the pseudo token (preset ``lincir``).
"""
from __future__ import annotations

from pathlib import Path

from . import IMPORTERS
from .searle import KEY, convert_phi

BACKBONES = {768: "hf:openai/clip-vit-large-patch14"}


@IMPORTERS.register("lincir", help="LinCIR phi (lincir_large.pt; ['Phi']) -> lincir:DIR")
def convert(src: Path, out_dir: Path, backbone: str | None = None) -> Path:
    return convert_phi(src, out_dir, "lincir", "lincir", BACKBONES, backbone, f"LinCIR torch.save dict, key {KEY!r}")


__all__ = ["BACKBONES", "convert"]
