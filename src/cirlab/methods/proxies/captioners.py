"""Captioners: reference image -> a description of it (IP-CIR's captioner, CIG/IP-CIR's pixel generators).

- ``hf:MODEL_ID_OR_DIR``: a transformers image-captioning model (BLIP, GIT, ...) loaded with
  ``AutoProcessor`` + ``AutoModelForImageTextToText``; needs the reference pixels.
- ``world:GALLERY_DIR``: **the world's analog of a captioner** (no captioning model exists for the
  built-in world): the caption of a gallery (the world's *train* split, never the test split) whose text
  feature is most similar, under the backbone, to the reference's image feature. It only needs
  features; its error rate is that of the backbone's image-to-text retrieval over the bank.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ...backbones.base import Backbone, load_image
from ...data import read_gallery
from ...errors import CirlabError, DatasetError
from ...registry import Registry, split_spec
from ..base import QueryBatch


@runtime_checkable
class Captioner(Protocol):
    """Describes the reference image of every query in a batch."""

    #: whether ``caption`` needs ``batch.reference_images``
    needs_pixels: bool

    def caption(self, batch: QueryBatch) -> list[str]: ...

    def config(self) -> dict[str, Any]: ...


CAPTIONERS: Registry[Captioner] = Registry("captioner")


def create_captioner(spec: str, backbone: Backbone) -> Captioner:
    """``create_captioner("world:/data/world/train", backbone)``; factories take ``(arg, backbone=...)``."""
    name, arg = split_spec(spec)
    cap = CAPTIONERS.get(name)(arg, backbone=backbone)
    cap.spec = spec
    return cap


# ---- the world's analog: nearest caption of a caption bank ------------------------------------------

_BANKS: dict[tuple[str, str, int], tuple[list[str], torch.Tensor]] = {}
BANK_FILES = ("caption-bank.json", "caption-bank.safetensors")


def caption_bank(source: str | Path, backbone: Backbone, max_captions: int = 0, progress: bool = False
                 ) -> tuple[list[str], torch.Tensor]:
    """The distinct ``caption`` fields of a gallery and their text features (cached per process).

    ``source`` is a gallery (dataset directory / ``gallery.jsonl``) or a directory written by
    ``save_caption_bank`` (the features then come from disk; the backbone fingerprint must match).
    """
    key = (str(Path(source).resolve()), backbone.fingerprint(), max_captions)
    if key in _BANKS:
        return _BANKS[key]
    root = Path(source)
    if (root / BANK_FILES[0]).is_file():
        from safetensors.torch import load_file

        meta = json.loads((root / BANK_FILES[0]).read_text())
        if meta.get("fingerprint") != backbone.fingerprint():
            raise CirlabError(f"{root / BANK_FILES[0]}: caption bank encoded with other weights "
                              f"({meta.get('backbone')!r}); rebuild it for {backbone.spec!r}")
        caps, feats = meta["captions"], load_file(str(root / BANK_FILES[1]))["features"]
    else:
        if not root.exists():
            raise CirlabError(f"world captioner: {root}: no such gallery (give the world's train split, "
                              f"e.g. world:/data/world/train)")
        gal = read_gallery(root)
        caps = list(dict.fromkeys(c for c in gal.captions if c))
        if not caps:
            raise DatasetError(f"world captioner: {root}: the gallery has no captions ('caption' field)")
        feats = None
    if max_captions:
        caps = caps[:max_captions]
    feats = backbone.encode_texts(caps, progress=progress) if feats is None else feats[:len(caps)]
    _BANKS[key] = (caps, feats)
    return _BANKS[key]


def save_caption_bank(out: str | Path, source: str | Path, backbone: Backbone, max_captions: int = 0,
                      progress: bool = True) -> Path:
    """Encode a gallery's captions once and write them to ``out`` (a ``world:OUT`` captioner reads it)."""
    from safetensors.torch import save_file

    caps, feats = caption_bank(source, backbone, max_captions, progress)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    save_file({"features": feats.contiguous()}, str(root / BANK_FILES[1]))
    meta = {"source": str(source), "backbone": backbone.spec, "fingerprint": backbone.fingerprint(),
            "captions": caps}
    tmp = root / (BANK_FILES[0] + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, root / BANK_FILES[0])
    return root


class NearestCaptionCaptioner:
    """World analog: argmax over a caption bank of <image feature, text feature>."""

    needs_pixels = False

    def __init__(self, backbone: Backbone, source: str | Path, max_captions: int = 0) -> None:
        self.backbone, self.source, self.max_captions = backbone, str(source), max_captions
        self._bank: tuple[list[str], torch.Tensor] | None = None

    def caption(self, batch: QueryBatch) -> list[str]:
        if self._bank is None:      # once per captioner: the bank's key hashes the backbone's weights
            self._bank = caption_bank(self.source, self.backbone, self.max_captions)
        caps, feats = self._bank
        sims = F.normalize(batch.reference_features.float(), dim=-1) @ feats.T
        return [caps[i] for i in sims.argmax(1).tolist()]

    def config(self) -> dict[str, Any]:
        return {"name": "world", "analog": True, "bank": self.source, "max_captions": self.max_captions}


@CAPTIONERS.register("world", help="WORLD ANALOG of a captioner: nearest caption of a gallery's captions by the "
                                   "backbone's image-text similarity; world:TRAIN_SPLIT_DIR")
def _world(arg: str, backbone: Backbone) -> Captioner:
    if not arg:
        raise CirlabError("world captioner: give the caption bank, e.g. world:/data/world/train")
    return NearestCaptionCaptioner(backbone, arg)


class OracleCaptioner:
    """Not a method: the gallery's own caption of each reference (an upper bound for analyses)."""

    needs_pixels = False

    def __init__(self, source: str | Path) -> None:
        gal = read_gallery(Path(source))
        self.source = str(source)
        self.captions = {i: c for i, c in zip(gal.ids, gal.captions) if c}

    def caption(self, batch: QueryBatch) -> list[str]:
        ids = batch.reference_ids or []
        missing = [i for i in ids if i not in self.captions]
        if len(ids) != len(batch) or missing:
            raise CirlabError(f"oracle captioner: references {missing[:3] or '(no ids)'} have no caption in "
                              f"{self.source}")
        return [self.captions[i] for i in ids]

    def config(self) -> dict[str, Any]:
        return {"name": "oracle", "upper_bound": True, "gallery": self.source,
                "oracle": "reads the evaluated gallery's own captions"}


@CAPTIONERS.register("oracle", help="NOT A METHOD: the evaluated gallery's own reference captions (upper bound); "
                                    "oracle:GALLERY_DIR")
def _oracle(arg: str, backbone: Backbone) -> Captioner:
    if not arg:
        raise CirlabError("oracle captioner: give the evaluated split, e.g. oracle:/data/world/test")
    return OracleCaptioner(arg)


# ---- transformers image captioning --------------------------------------------------------------------

class HFCaptioner:
    """A transformers image-to-text model (hub id or local directory), greedy decoding."""

    needs_pixels = True

    def __init__(self, model: str, max_new_tokens: int = 30, prompt: str | None = None, device: str = "cpu") -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = AutoModelForImageTextToText.from_pretrained(model).to(device).eval()
        except (OSError, ValueError) as e:
            raise CirlabError(f"hf captioner: cannot load {model!r} as an image-captioning model: {e}") from None
        self.source, self.max_new_tokens, self.prompt, self.device = model, max_new_tokens, prompt, device

    @torch.no_grad()
    def caption_images(self, images: list[Any], batch_size: int = 16) -> list[str]:
        out: list[str] = []
        for lo in range(0, len(images), batch_size):
            pil = [load_image(i) for i in images[lo:lo + batch_size]]
            kw: dict[str, Any] = {"images": pil, "return_tensors": "pt"}
            if self.prompt:
                kw["text"] = [self.prompt] * len(pil)
            inputs = {k: v.to(self.device) for k, v in self.processor(**kw).items()}
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            out += [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return out

    def caption(self, batch: QueryBatch) -> list[str]:
        if batch.reference_images is None:
            raise CirlabError(f"hf captioner {self.source}: needs the reference images (pixels), got features only")
        return self.caption_images(list(batch.reference_images))

    def config(self) -> dict[str, Any]:
        return {"name": "hf", "model": self.source, "max_new_tokens": self.max_new_tokens, "prompt": self.prompt}


@CAPTIONERS.register("hf", help="a transformers image-captioning model (BLIP, GIT, ...); hf:HUB_ID_OR_DIR")
def _hf(arg: str, backbone: Backbone) -> Captioner:
    if not arg:
        raise CirlabError("hf captioner: give a model, e.g. hf:Salesforce/blip-image-captioning-base or hf:/models/blip")
    return HFCaptioner(arg, device=str(backbone.device))


__all__ = ["CAPTIONERS", "Captioner", "HFCaptioner", "NearestCaptionCaptioner", "OracleCaptioner", "caption_bank", "create_captioner",
           "save_caption_bank"]
