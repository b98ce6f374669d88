"""``openclip``: OpenCLIP models (optional extra ``cirlab[openclip]``; needs torchvision).

Spec:
* ``openclip:ViT-L-14/openai``: architecture + pretrained tag (downloaded by open_clip, or
  taken from its cache offline);
* ``openclip:ViT-B-32//path/to/ckpt.pt``: architecture + a local checkpoint file;
* ``openclip:ViT-B-32``: architecture with random weights (tests, training from scratch);
* ``openclip:hf-hub:org/repo``: an open_clip repo on the Hugging Face hub;
* ``openclip:/path/to/dir``: a directory with ``open_clip_config.json`` and weights
  (``OpenClipBackbone.save`` writes one; ``open_clip_model.safetensors``).

Preprocessing is open_clip's own eval transform, or TargetPad with the model's input size, mean
and std: ``openclip:<model>,preprocess=targetpad[,target_ratio=1.25]`` (see ``preprocess.py``).
The tokenizer is open_clip's.
Pseudo words are injected through a forward hook on ``token_embedding`` (see
``inject.py``); the placeholder is ``$`` when the tokenizer keeps it as one token.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from safetensors.torch import save_file

from ..errors import CirlabError
from . import BACKBONES
from .base import PLACEHOLDER, Backbone, finish, placeholder_mask
from .extras import require
from .inject import TokenInjector
from .preprocess import PreprocessOptions, split_backbone_options, targetpad_pixels

open_clip = require("open_clip", "openclip", "openclip")

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
PLACEHOLDER_CANDIDATES = (PLACEHOLDER, "*", "@", "§")


def _parse(arg: str) -> tuple[str, str | None]:
    """``"ViT-L-14/openai"`` -> ("ViT-L-14", "openai"); a directory -> ("local-dir:<dir>", None)."""
    p = Path(arg).expanduser()
    if p.is_dir():
        return f"local-dir:{p}", None
    if arg.startswith("hf-hub:"):
        return arg, None
    name, _, pretrained = arg.partition("/")
    return name, (pretrained or None)


class OpenClipBackbone(Backbone):
    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any, model_name: str,
                 model_cfg: dict[str, Any] | None, preprocessing: PreprocessOptions = PreprocessOptions()) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.model = model
        self._preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_cfg = model_cfg
        text = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
        self._token_embedding = getattr(text, "token_embedding", None)
        if self._token_embedding is None:
            raise CirlabError(f"openclip backbone {model_name!r}: its text tower has no token_embedding "
                              "(custom Hugging Face text towers are not supported)")
        self.token_dim = int(self._token_embedding.weight.shape[1])
        self.embed_dim = int(model.text_projection.shape[1] if isinstance(getattr(model, "text_projection", None),
                                                                          torch.Tensor)
                             else self._probe_dim())
        self._injector = TokenInjector(self._token_embedding)
        self.placeholder, self.placeholder_id = self._pick_placeholder()

    def _probe_dim(self) -> int:
        with torch.no_grad():
            return int(self.model.encode_text(self.tokenize(["a"])["input_ids"]).shape[-1])

    def _pick_placeholder(self) -> tuple[str, int | None]:
        base = self.tokenizer(["a photo of b"])[0].tolist()
        for cand in PLACEHOLDER_CANDIDATES:
            ids = self.tokenizer([f"a photo of {cand} b"])[0].tolist()
            new = [i for i in ids if i not in base]
            if len(new) == 1 and ids.count(new[0]) == 1 and ids[:4] == base[:4]:
                return cand, int(new[0])
        return PLACEHOLDER, None

    # ---- preprocessing ---------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        if self.preprocessing.mode == "targetpad":
            visual = self.model.visual
            size = visual.image_size
            size = int(size[0] if isinstance(size, (tuple, list)) else size)
            mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
            std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
            return targetpad_pixels(image.convert("RGB"), size, mean, std, self.preprocessing.target_ratio)
        return self._preprocess(image.convert("RGB"))

    def preprocess_config(self) -> dict[str, Any]:
        return {"transform": repr(self._preprocess), "cirlab": self.preprocessing.to_dict()}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokenizer(list(texts))}

    # ---- forward hooks ---------------------------------------------------------------------
    def forward_images(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return finish(self.model.encode_image(pixels), normalize)

    def forward_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        if not hasattr(visual, "output_tokens"):
            raise CirlabError(f"openclip backbone {self.model_name!r}: its image tower does not return patch tokens")
        before = visual.output_tokens
        visual.output_tokens = True
        try:
            _, tokens = visual(pixels)
        finally:
            visual.output_tokens = before
        return tokens

    def forward_texts(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        return finish(self.model.encode_text(tokens["input_ids"]), normalize)

    def forward_texts_pseudo(self, tokens: dict[str, torch.Tensor], pseudo: torch.Tensor,
                             normalize: bool = True, first_only: bool = False) -> torch.Tensor:
        ids = tokens["input_ids"]
        if self.placeholder_id is None:
            raise CirlabError(f"openclip backbone {self.model_name!r}: no single-token placeholder among "
                              f"{PLACEHOLDER_CANDIDATES}")
        if pseudo.shape != (ids.shape[0], self.token_dim):
            raise CirlabError(f"pseudo tokens have shape {tuple(pseudo.shape)}, expected ({ids.shape[0]}, {self.token_dim})")
        with self._injector.active(placeholder_mask(ids, self.placeholder_id, first_only), pseudo):
            return self.forward_texts(tokens, normalize)

    def token_embedding_weight(self) -> torch.Tensor:
        return self._token_embedding.weight

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``open_clip_config.json`` + ``open_clip_model.safetensors``; ``openclip:<directory>`` loads it."""
        if not self.model_cfg:
            raise CirlabError(f"openclip backbone {self.model_name!r}: unknown model config, cannot save")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        visual = self.model.visual
        pp = {"mean": list(visual.image_mean), "std": list(visual.image_std)}
        pp.update({k: v for k, v in getattr(visual, "preprocess_cfg", {}).items()
                   if k in ("interpolation", "resize_mode")})
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(d / (WEIGHTS_NAME + ".tmp")))
        os.replace(d / (WEIGHTS_NAME + ".tmp"), d / WEIGHTS_NAME)
        (d / CONFIG_NAME).write_text(json.dumps({"model_cfg": self.model_cfg, "preprocess_cfg": pp}, indent=1))
        return d


@BACKBONES.register("openclip")
def create_openclip(arg: str, **model_kwargs: Any) -> OpenClipBackbone:
    if not arg:
        raise CirlabError("openclip backbone needs a model, e.g. openclip:ViT-B-32/openai or openclip:/path/to/dir")
    arg, preprocessing = split_backbone_options(arg, "openclip")
    name, pretrained = _parse(arg)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, **model_kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, ValueError, OSError) as e:
        raise CirlabError(f"openclip backbone {arg!r}: {e}") from None
    model_cfg = open_clip.get_model_config(name)
    return OpenClipBackbone(model, preprocess, tokenizer, name, model_cfg, preprocessing)


__all__ = ["OpenClipBackbone", "create_openclip"]
