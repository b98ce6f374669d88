"""Image preprocessing options of the ``hf:`` and ``openclip:`` backbones, chosen in the spec string.

``hf:<id or dir>`` and ``openclip:<model>`` take options after a comma (the ``kind:arg,key=value``
syntax of ``cirlab.registry.parse_spec_options``):

* ``preprocess=clip`` (default): the model's own processor (resize the shorter side, centre crop);
* ``preprocess=targetpad``: TargetPad, the preprocessing SEARLE and CLIP4Cir evaluate with
  (``targetpad_transform`` in their code): an image whose aspect ratio (long / short side) is at
  least ``target_ratio`` is first padded with black, symmetrically, to that ratio (each side gets
  ``int((long / target_ratio - side) / 2)`` pixels, never negative); then the shorter side is resized
  to the crop size (bicubic), the centre is cropped, and the pixels are scaled to [0, 1] and normalised
  with the model's mean and std. Images below the ratio are not padded;
* ``target_ratio=R`` (default 1.25, the papers' value).

E.g. ``hf:openai/clip-vit-large-patch14,preprocess=targetpad`` or
``openclip:RN50x4/openai,preprocess=targetpad,target_ratio=1.25``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import CirlabError
from ..registry import parse_spec_options

MODES = ("clip", "targetpad")
DEFAULT_TARGET_RATIO = 1.25


@dataclass(frozen=True)
class PreprocessOptions:
    mode: str = "clip"
    target_ratio: float = DEFAULT_TARGET_RATIO

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CirlabError(f"preprocess={self.mode!r}: use one of {', '.join(MODES)}")
        if not self.target_ratio >= 1.0:
            raise CirlabError(f"target_ratio={self.target_ratio}: must be >= 1 (long side / short side)")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "target_ratio": self.target_ratio} if self.mode == "targetpad" else {"mode": "clip"}


def split_backbone_options(arg: str, kind: str) -> tuple[str, PreprocessOptions]:
    """``"openai/clip-vit-base-patch32,preprocess=targetpad"`` -> the model argument and its options."""
    head, opts = parse_spec_options(arg, {"preprocess": str, "target_ratio": float}, f"{kind} backbone {arg!r}")
    return head, PreprocessOptions(opts.get("preprocess", "clip"), opts.get("target_ratio", DEFAULT_TARGET_RATIO))


def target_pad(image: Image.Image, target_ratio: float) -> Image.Image:
    """Pad ``image`` with black to ``target_ratio`` when its aspect ratio is at least that (else unchanged)."""
    w, h = image.size
    if max(w, h) / min(w, h) < target_ratio:
        return image
    scaled = max(w, h) / target_ratio
    hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
    return ImageOps.expand(image, border=(hp, vp, hp, vp), fill=0)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic); the longer side scaled and truncated to an int."""
    w, h = image.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return image if new == (w, h) else image.resize(new, Image.BICUBIC)


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def targetpad_pixels(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float],
                     target_ratio: float = DEFAULT_TARGET_RATIO) -> torch.Tensor:
    """TargetPad preprocessing of one image -> a (3, size, size) float tensor."""
    image = centre_crop(resize_shorter(target_pad(image, target_ratio), size), size).convert("RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


__all__ = ["DEFAULT_TARGET_RATIO", "MODES", "PreprocessOptions", "centre_crop", "resize_shorter",
           "split_backbone_options", "target_pad", "targetpad_pixels"]
