"""Pic2Word (Saito et al., CVPR 2023): the released ``.pt`` checkpoint -> a ``pic2word:DIR`` checkpoint.

The official file is a ``torch.save`` dict ``{epoch, name, state_dict, state_dict_img2text, optimizer}``
written from DistributedDataParallel, so keys carry a ``module.`` prefix. ``state_dict_img2text`` is
the ``IM2TEXT`` module: ``n_layer`` blocks ``layers.{i}`` = [Linear, Dropout(0.1), ReLU] (weights at
``layers.{i}.0``) and ``fc_out``; for ViT-L/14, 768 -> 512 -> 512 -> 768. Dropout before ReLU equals
ReLU before dropout, so the blocks map onto ``Phi.net`` as ``layers.{i}.0 -> net.{3i}``,
``fc_out -> net.{3 n_layer}``. (The frozen CLIP in ``state_dict`` is OpenAI's and is not converted:
the backbone is ``hf:openai/clip-vit-large-patch14``.)
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import CirlabError
from ...methods.textual_inversion import PhiConfig
from ..safe_load import load_weights_only, state_dict_at
from . import IMPORTERS
from .phi import default_backbone, linear_shapes, write_phi_checkpoint

#: CLIP embedding width -> the backbone Pic2Word was released for (ViT-L/14 only)
BACKBONES = {768: "hf:openai/clip-vit-large-patch14"}
KEY = "state_dict_img2text"
DROPOUT = 0.1
_BLOCK = re.compile(r"layers\.(\d+)\.0\.(weight|bias)")


@IMPORTERS.register("pic2word", help="Pic2Word .pt (state_dict_img2text, module. prefix) -> pic2word:DIR")
def convert(src: Path, out_dir: Path, backbone: str | None = None) -> Path:
    state = state_dict_at(load_weights_only(src), KEY, src)
    blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK.fullmatch(k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise CirlabError(f"{src}: {KEY} has no IM2TEXT blocks layers.0.0 ... (keys: {sorted(state)[:8]})")
    names = [f"layers.{i}.0" for i in blocks] + ["fc_out"]
    shapes = linear_shapes(state, [f"{n}.weight" for n in names], src)
    rename = {n: f"net.{3 * i}" for i, n in enumerate(names)}
    mapped = {}
    for k, v in state.items():
        head, _, leaf = k.rpartition(".")
        if head not in rename:
            raise CirlabError(f"{src}: unexpected {KEY} key {k!r} (an IM2TEXT has layers.N.0.* and fc_out.*)")
        mapped[f"{rename[head]}.{leaf}"] = v
    cfg = PhiConfig(in_dim=shapes[0][1], out_dim=shapes[-1][0], hidden=shapes[0][0], layers=len(names),
                    activation="relu", dropout=DROPOUT, raw_input=True)
    backbone = default_backbone(cfg.in_dim, BACKBONES, backbone, src)
    return write_phi_checkpoint("pic2word", "pic2word", mapped, cfg, src, out_dir, backbone,
                                f"Pic2Word torch.save dict, key {KEY!r}")

__all__ = ["BACKBONES", "convert"]
