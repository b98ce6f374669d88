"""CLIP4Cir (Baldrati et al.): the Combiner and the fine-tuned CLIP of the released checkpoints.

The official files are ``torch.save`` dicts:

* ``{"Combiner": state_dict}``: ``text_projection_layer``, ``image_projection_layer`` (dim -> projection),
  ``combiner_layer`` (2 * projection -> hidden), ``output_layer`` (hidden -> dim) and the gate
  ``dynamic_scalar.{0,3}``; converted into a ``combiner:DIR`` checkpoint with the official forward's
  choices (``order="text-image"``, ``fixed_scale=100``, ``raw_input=True``, dropout 0.5);
* ``{"CLIP": state_dict}``: the fine-tuned OpenAI CLIP (RN50x4), OpenAI key names; converted into an
  ``openclip:DIR`` directory (``open_clip_config.json`` + ``open_clip_model.safetensors``) whose model
  config is read off the tensor shapes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ...checkpoint import save_checkpoint
from ...errors import CirlabError
from ..safe_load import load_weights_only, state_dict_at, take
from . import IMPORTERS

#: official Combiner name -> cirlab ``Combiner`` name
COMBINER_KEYS = {
    "text_projection_layer": "text_proj",
    "image_projection_layer": "image_proj",
    "combiner_layer": "fuse",
    "output_layer": "out",
    "dynamic_scalar.0": "gate.0",
    "dynamic_scalar.3": "gate.3",
}
OFFICIAL_SCALE = 100.0
OFFICIAL_DROPOUT = 0.5
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def combiner_config(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The ``CombinerConfig`` fields of an official Combiner state dict (read off its shapes)."""
    try:
        projection, dim = state["text_projection_layer.weight"].shape
        hidden, both = state["combiner_layer.weight"].shape
    except KeyError as e:
        raise CirlabError(f"{path}: the Combiner state dict lacks {e.args[0]!r}") from None
    if both != 2 * projection:
        raise CirlabError(f"{path}: combiner_layer takes {both} inputs, expected 2 x projection = {2 * projection}")
    return {"dim": int(dim), "projection": int(projection), "hidden": int(hidden), "dropout": OFFICIAL_DROPOUT,
            "order": "text-image", "fixed_scale": OFFICIAL_SCALE, "raw_input": True}


def convert_combiner(state: dict[str, torch.Tensor], src: Path, out_dir: Path, backbone: str = "") -> Path:
    from ...methods.combiner import Combiner, CombinerConfig

    cfg = CombinerConfig(**combiner_config(state, src))
    weights = take(state, COMBINER_KEYS, src, "Combiner")
    weights["logit_scale"] = torch.tensor(math.log(OFFICIAL_SCALE))
    probe = Combiner(cfg)
    missing, unexpected = probe.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CirlabError(f"{src}: Combiner weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return save_checkpoint(out_dir, "combiner", {"combiner": cfg.__dict__, "backbone": backbone, "fingerprint": "",
                                                 "training": {"imported_from": str(src), "format": "clip4cir"}},
                           weights)


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def openai_model_config(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """An open_clip model config (QuickGELU, as OpenAI's models) read off an OpenAI CLIP state dict's shapes."""
    try:
        width = int(state["ln_final.weight"].shape[0])
        text = {"context_length": int(state["positional_embedding"].shape[0]),
                "vocab_size": int(state["token_embedding.weight"].shape[0]), "width": width,
                "heads": width // 64, "layers": _count(state, "transformer.resblocks.")}
        embed_dim = int(state["text_projection"].shape[1])
        if "visual.proj" in state:  # ViT
            patch = int(state["visual.conv1.weight"].shape[-1])
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = {"image_size": patch * grid, "layers": _count(state, "visual.transformer.resblocks."),
                      "width": int(state["visual.conv1.weight"].shape[0]), "patch_size": patch}
        else:                       # ModifiedResNet
            grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = {"image_size": grid * 32, "layers": [_count(state, f"visual.layer{b}.") for b in (1, 2, 3, 4)],
                      "width": int(state["visual.layer1.0.conv1.weight"].shape[0]), "patch_size": None}
    except KeyError as e:
        raise CirlabError(f"{path}: not an OpenAI CLIP state dict (no {e.args[0]!r})") from None
    return {"embed_dim": embed_dim, "quick_gelu": True, "vision_cfg": vision, "text_cfg": text}


def _write_openclip_dir(state: dict[str, torch.Tensor], model_cfg: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous() for k, v in state.items()
               if k not in ("input_resolution", "context_length", "vocab_size")}
    tmp = out_dir / "open_clip_model.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out_dir / "open_clip_model.safetensors")
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}}
    tmp = out_dir / "open_clip_config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, out_dir / "open_clip_config.json")
    return out_dir


@IMPORTERS.register("clip4cir", help="CLIP4Cir .pt: {'Combiner': ...} -> combiner:DIR; {'CLIP': ...} -> openclip:DIR")
def convert(src: Path, out_dir: Path, backbone: str = "", **_: Any) -> Path:
    obj = load_weights_only(src)
    if isinstance(obj, dict) and "Combiner" in obj:
        return convert_combiner(state_dict_at(obj, "Combiner", src), src, out_dir, backbone)
    if isinstance(obj, dict) and "CLIP" in obj:
        state = state_dict_at(obj, "CLIP", src)
        return _write_openclip_dir(state, openai_model_config(state, src), out_dir)
    have = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CirlabError(f"{src}: not a CLIP4Cir checkpoint (expected a dict with 'Combiner' or 'CLIP'; found {have})")


__all__ = ["COMBINER_KEYS", "combiner_config", "convert", "openai_model_config"]
