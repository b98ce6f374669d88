"""``hf``: CLIP-family models from Hugging Face ``transformers`` (CLIP, SigLIP).

Spec: ``hf:<hub id>`` (e.g. ``hf:openai/clip-vit-large-patch14``, loaded from the hub
or from the local hub cache when ``HF_HUB_OFFLINE=1``) or ``hf:<local dir>`` (a
directory written by ``save_pretrained``/``HFBackbone.save``: model config and
weights, the image processor config and the tokenizer files).

Preprocessing is the model's own image-processor config, run with the PIL backend
(no torchvision needed), or TargetPad with that config's crop size, mean and std:
``hf:<id or dir>,preprocess=targetpad[,target_ratio=1.25]`` (see ``preprocess.py``).
The tokenizer comes from the same directory. Features are the pooled, projected
outputs of ``get_image_features``/``get_text_features``, L2-normalised unless
``normalize=False``.

Pseudo-word injection (``forward_texts_pseudo``): the text towers take no
``inputs_embeds``, so a forward hook on the token-embedding module replaces the
output rows at the placeholder's positions with the given vectors (see
``inject.py``; a no-op unless a pseudo call is under way on the current thread),
and gradients flow into the vectors. The placeholder is the first of ``PLACEHOLDER_CANDIDATES``
that this tokenizer encodes as exactly one known token when it stands between
spaces: ``$`` for CLIP's byte-level BPE; SigLIP's tokenizer strips ASCII punctuation
before encoding, so there it is a non-ASCII symbol such as ``§``. Methods read
``backbone.placeholder``; write it with spaces on both sides.

Model families are entries in ``FAMILIES`` (keyed by the config's ``model_type``);
another CLIP-like model joins by adding one entry.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import nn

from ..errors import CirlabError
from . import BACKBONES
from .base import PLACEHOLDER, Backbone, finish, placeholder_mask
from .extras import require
from .inject import TokenInjector, pick_placeholder
from .preprocess import PreprocessOptions, split_backbone_options, targetpad_pixels

transformers = require("transformers", "hf", "hf")

#: tried in order; the first that is a single known token between spaces becomes the placeholder
#: (SigLIP's tokenizer deletes ASCII punctuation, so the non-ASCII symbols are there for it)
PLACEHOLDER_CANDIDATES = (PLACEHOLDER, "*", "@", "§", "¤", "¶")


@dataclass(frozen=True)
class HFFamily:
    """What differs between CLIP-like model families in transformers."""

    model_class: str                      # class in the transformers namespace
    embed_dim: Callable[[Any], int]       # joint-space dimension from the model config
    pad_to_max_length: bool = False       # SigLIP is trained on texts padded to the full context
    use_attention_mask: bool = True       # SigLIP's text tower is trained without one
    vision_cls_token: bool = True         # the first vision token is a class token (dropped from patch tokens)
    normalise_tokens: bool = True         # apply the vision post-layernorm to the patch tokens


FAMILIES: dict[str, HFFamily] = {
    "clip": HFFamily("CLIPModel", lambda c: c.projection_dim),
    "siglip": HFFamily("SiglipModel", lambda c: c.vision_config.hidden_size, pad_to_max_length=True,
                       use_attention_mask=False, vision_cls_token=False, normalise_tokens=False),
}


def _hub_error(source: str, e: Exception) -> CirlabError:
    e = " ".join(str(e).split())  # type: ignore[assignment]  # transformers' messages span lines
    local = Path(source).expanduser()
    if local.exists():
        return CirlabError(f"hf backbone: {local} is not a loadable transformers model directory ({e})")
    return CirlabError(f"hf backbone: could not load {source!r} from the Hugging Face hub or its local cache ({e}); "
                       f"offline, pass a local directory: hf:/path/to/model")


class HFBackbone(Backbone):
    """A transformers CLIP-like model with its image processor and tokenizer."""

    def __init__(self, model: nn.Module, image_processor: Any, tokenizer: Any, source: str = "",
                 preprocessing: PreprocessOptions = PreprocessOptions()) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        model_type = getattr(model.config, "model_type", "?")
        if model_type not in FAMILIES:
            raise CirlabError(f"hf backbone {source!r}: model_type {model_type!r} is not supported "
                              f"(supported: {', '.join(sorted(FAMILIES))})")
        self.family = FAMILIES[model_type]
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.source = source
        self.embed_dim = int(self.family.embed_dim(model.config))
        self.token_dim = int(model.config.text_config.hidden_size)
        self.context = int(model.config.text_config.max_position_embeddings)
        self.placeholder, self.placeholder_id = pick_placeholder(tokenizer, PLACEHOLDER_CANDIDATES)
        self._token_embedding = self.model.text_model.embeddings.token_embedding
        self._injector = TokenInjector(self._token_embedding)

    # ---- tokenizer and placeholder ---------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        padding = "max_length" if self.family.pad_to_max_length else "longest"
        enc = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.context,
                             return_tensors="pt")
        out = {"input_ids": enc["input_ids"]}
        if self.family.use_attention_mask and "attention_mask" in enc:
            out["attention_mask"] = enc["attention_mask"]
        return out

    # ---- preprocessing ---------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        if self.preprocessing.mode == "targetpad":
            p = self.image_processor
            return targetpad_pixels(image.convert("RGB"), self.crop_size(), p.image_mean, p.image_std,
                                    self.preprocessing.target_ratio)
        return self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def crop_size(self) -> int:
        """The square input size of the image processor (its crop, or its resize when it does not crop)."""
        p = self.image_processor
        for attr in ("crop_size", "size"):
            v = getattr(p, attr, None)
            if isinstance(v, int):
                return v
            for key in ("height", "shortest_edge"):
                edge = v.get(key) if isinstance(v, dict) else getattr(v, key, None)
                if edge:
                    return int(edge)
        raise CirlabError(f"hf backbone {self.source!r}: cannot read the input size off its image processor")

    def preprocess_config(self) -> dict[str, Any]:
        """The image processor's settings and the preprocessing option (part of the feature-cache key)."""
        cfg = self.image_processor.to_dict()
        return {**{k: v for k, v in cfg.items() if not k.startswith("_")}, "cirlab": self.preprocessing.to_dict()}

    # ---- forward hooks ---------------------------------------------------------------------
    def forward_images(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixels.to(self.model.dtype))
        return finish(out.pooler_output, normalize)

    def forward_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        tokens = vision(pixel_values=pixels.to(self.model.dtype)).last_hidden_state
        if self.family.vision_cls_token:
            tokens = tokens[:, 1:]
        if self.family.normalise_tokens:
            tokens = vision.post_layernorm(tokens)
        return tokens

    def forward_texts(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        kwargs = {"input_ids": tokens["input_ids"]}
        if self.family.use_attention_mask and "attention_mask" in tokens:
            kwargs["attention_mask"] = tokens["attention_mask"]
        out = self.model.get_text_features(**kwargs)
        return finish(out.pooler_output, normalize)

    def forward_texts_pseudo(self, tokens: dict[str, torch.Tensor], pseudo: torch.Tensor,
                             normalize: bool = True, first_only: bool = False) -> torch.Tensor:
        if self.placeholder_id is None:
            raise CirlabError(f"hf backbone {self.spec or self.source!r}: its tokenizer has no single-token "
                              f"placeholder among {PLACEHOLDER_CANDIDATES}; pseudo-word methods cannot run on it")
        ids = tokens["input_ids"]
        if pseudo.shape != (ids.shape[0], self.token_dim):
            raise CirlabError(f"pseudo tokens have shape {tuple(pseudo.shape)}, expected ({ids.shape[0]}, {self.token_dim})")
        with self._injector.active(placeholder_mask(ids, self.placeholder_id, first_only), pseudo):
            return self.forward_texts(tokens, normalize)

    def token_embedding_weight(self) -> torch.Tensor:
        return self._token_embedding.weight

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write model (safetensors), image processor and tokenizer; ``hf:<directory>`` loads it back."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(d)
        self.image_processor.save_pretrained(d)
        self.tokenizer.save_pretrained(d)
        return d

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model_type": self.model.config.model_type, "placeholder": self.placeholder,
                "preprocess": self.preprocessing.to_dict()}


def load_hf(source: str, dtype: torch.dtype | str | None = None, revision: str | None = None,
            preprocessing: PreprocessOptions = PreprocessOptions()) -> HFBackbone:
    local = Path(source).expanduser()
    where = str(local) if local.exists() else source
    opts: dict[str, Any] = {"revision": revision} if revision and not local.exists() else {}
    try:
        config = transformers.AutoConfig.from_pretrained(where, **opts)
    except (OSError, ValueError) as e:
        raise _hub_error(source, e) from None
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise CirlabError(f"hf backbone {source!r}: model_type {config.model_type!r} is not supported "
                          f"(supported: {', '.join(sorted(FAMILIES))})")
    try:
        model = getattr(transformers, family.model_class).from_pretrained(where, dtype=dtype or torch.float32, **opts)
        processor = transformers.AutoImageProcessor.from_pretrained(where, backend="pil", **opts)
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, **opts)
    except (OSError, ValueError) as e:
        raise _hub_error(source, e) from None
    return HFBackbone(model, processor, tokenizer, source, preprocessing)


@BACKBONES.register("hf")
def create_hf(arg: str, dtype: torch.dtype | str | None = None, revision: str | None = None) -> HFBackbone:
    if not arg:
        raise CirlabError("hf backbone needs a hub id or a directory, e.g. hf:openai/clip-vit-base-patch32")
    source, preprocessing = split_backbone_options(arg, "hf")
    return load_hf(source, dtype=dtype, revision=revision, preprocessing=preprocessing)


__all__ = ["FAMILIES", "HFBackbone", "HFFamily", "PLACEHOLDER_CANDIDATES", "create_hf", "load_hf"]
