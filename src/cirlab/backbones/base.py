"""The backbone protocol: a joint image-text embedding model with its own preprocessing.

Every backbone is a ``torch.nn.Module`` that carries its preprocessing and its
tokenizer, so ``create_backbone(spec)`` is all a user needs::

    model = create_backbone("tiny:world")
    img = model.encode_images(["a.png", "b.png"])      # (2, D), L2-normalised
    txt = model.encode_texts(["a red circle"])          # (1, D), L2-normalised
    raw = model.encode_images(["a.png"], normalize=False)  # the raw projected feature

``normalize=False`` on every ``forward_*``/``encode_*`` call gives the raw projected
feature, the input the official learned modules (Pic2Word, SEARLE, LinCIR phi, the
CLIP4Cir Combiner) were trained on; ``normalize=True`` (the default) is its L2-normalised
direction, what retrieval ranks by.

Subclasses implement the differentiable ``forward_*`` hooks; the high-level
``encode_*`` calls batch, preprocess and run them without gradients.
Textual-inversion methods use ``forward_texts_pseudo``: texts containing the
placeholder word (``$`` by default) are encoded with the placeholder's token
embedding replaced by a given vector. World-model methods use
``forward_image_tokens`` to get patch tokens.
"""
from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..imaging import DEFAULT_BOUNDS, ImageBounds, check_size, open_image

ImageLike = Union[str, os.PathLike, Image.Image]
PLACEHOLDER = "$"


def finish(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """A backbone's last step: the raw projected ``features`` as float32, L2-normalised when asked."""
    features = features.float()
    return F.normalize(features, dim=-1) if normalize else features


def placeholder_mask(ids: torch.Tensor, placeholder_id: int, first_only: bool = False) -> torch.Tensor:
    """(B, L) bool mask of where the pseudo token goes: every ``placeholder_id`` (LinCIR's official code), or
    with ``first_only`` the first one of each row (Pic2Word's and SEARLE's; later ones keep their embedding)."""
    hit = ids == placeholder_id
    return hit & (hit.long().cumsum(1) == 1) if first_only else hit


#: rows per length group of ``length_grouped`` (smaller groups waste less on padding but multiply smaller matrices)
GROUP_ROWS = 64


def length_grouped(backbone: "Backbone", tokens: Mapping[str, torch.Tensor],
                   forward: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
                   group_rows: int = GROUP_ROWS) -> torch.Tensor:
    """``forward(tokens, rows)`` over the batch's rows sorted by text length, in groups of about ``group_rows``,
    each group's tokens cut to its longest text; the outputs come back in the batch's order.

    ``rows`` are the group's row indices into the batch (to select per-row inputs such as pseudo tokens).
    For a backbone whose features ignore trailing padding (``trailing_padding_free``) this equals
    ``forward(tokens, arange(B))`` up to float rounding, gradients included, with less work spent on padding;
    other backbones, small batches and batches of texts of one length get that single call.
    """
    mask = tokens["attention_mask"]
    n = len(mask)
    lengths = mask.long().sum(1)
    if not backbone.trailing_padding_free or n < 2 * group_rows or int(lengths.min()) == int(lengths.max()):
        return forward(dict(tokens), torch.arange(n, device=mask.device))
    order = torch.argsort(lengths, stable=True)
    outs = []
    for rows in order.tensor_split(n // group_rows):
        longest = int(lengths[rows].max())
        outs.append(forward({k: v[rows, :longest] for k, v in tokens.items()}, rows))
    return torch.cat(outs)[torch.argsort(order)]


def load_image(item: ImageLike, bounds: ImageBounds = DEFAULT_BOUNDS) -> Image.Image:
    """An RGB image from a path or a PIL image, refused (``cirlab.imaging.ImageError``) when it is over
    ``bounds``' pixel count or aspect ratio: a path is checked from its header, before it is decoded."""
    if isinstance(item, Image.Image):
        check_size(*item.size, bounds)
        return item if item.mode == "RGB" else item.convert("RGB")  # no copy: preprocessing never writes in place
    return open_image(item, bounds, exif_transpose=False)  # the pixels as stored, as features always were


class Backbone(nn.Module, abc.ABC):
    """Joint vision-language encoder. Outputs of ``forward_images``/``forward_texts`` are L2-normalised
    unless called with ``normalize=False`` (then the raw projected features)."""

    #: the spec string that created the model (recorded in index manifests and results)
    spec: str = ""
    #: dimension of the joint embedding space
    embed_dim: int
    #: dimension of the text encoder's token embeddings (the space pseudo-words live in)
    token_dim: int
    #: placeholder word that ``forward_texts_pseudo`` replaces
    placeholder: str = PLACEHOLDER
    #: a text's feature does not depend on padding after its last token (the attention mask hides it), so a
    #: batch may be cut to its longest text (``length_grouped`` above relies on it)
    trailing_padding_free: bool = False

    # ---- preprocessing, attached to the model --------------------------------------------
    @abc.abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> a (C, H, W) float tensor ready for ``forward_images``."""

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts -> the keyword tensors ``forward_texts`` takes (at least ``input_ids``)."""

    # ---- differentiable forward hooks -----------------------------------------------------
    @abc.abstractmethod
    def forward_images(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, C, H, W) -> (B, D) image embeddings (normalised; raw projected with ``normalize=False``)."""

    @abc.abstractmethod
    def forward_texts(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        """Tokenised texts -> (B, D) text embeddings (normalised; raw projected with ``normalize=False``)."""

    @abc.abstractmethod
    def forward_texts_pseudo(self, tokens: dict[str, torch.Tensor], pseudo: torch.Tensor,
                             normalize: bool = True, first_only: bool = False) -> torch.Tensor:
        """Like ``forward_texts`` with the input embedding of every placeholder token (``first_only``: the
        first of each row) replaced by ``pseudo[b]`` (shape (B, token_dim)); gradients flow into ``pseudo``."""

    @abc.abstractmethod
    def forward_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, token width) patch tokens of the image encoder's last layer."""

    def forward_image_tokens_and_features(self, pixels: torch.Tensor, normalize: bool = True
                                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward_image_tokens(pixels), forward_images(pixels, normalize))``; a backbone whose image
        tower yields both in one pass overrides this to run it once."""
        return self.forward_image_tokens(pixels), self.forward_images(pixels, normalize)

    def token_embedding_weight(self) -> torch.Tensor:
        """(vocab, token_dim) matrix of the text encoder's input token embeddings."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its token embeddings")

    # ---- conveniences ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        try:
            return next(self.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def preprocess_batch(self, images: Iterable[ImageLike]) -> torch.Tensor:
        return torch.stack([self.preprocess(load_image(i)) for i in images])

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageLike], batch_size: int = 64, progress: bool = False,
                      normalize: bool = True) -> torch.Tensor:
        """Images (paths or PIL) -> (N, D) float32 embeddings on the CPU (normalised unless ``normalize=False``)."""
        was_training = self.training
        self.eval()
        out = []
        steps = range(0, len(images), batch_size)
        for start in tqdm(steps, desc="encode images", unit="batch", disable=not progress):
            pixels = self.preprocess_batch(images[start:start + batch_size]).to(self.device)
            out.append(self.forward_images(pixels, normalize=normalize).float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False,
                     normalize: bool = True) -> torch.Tensor:
        """Texts -> (N, D) float32 embeddings on the CPU (normalised unless ``normalize=False``)."""
        was_training = self.training
        self.eval()
        # texts of similar length share a batch (cut to its longest) when padding cannot change a feature
        order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if self.trailing_padding_free \
            else list(range(len(texts)))
        out = []
        for start in tqdm(range(0, len(texts), batch_size), desc="encode texts", disable=not progress):
            batch = [texts[i] for i in order[start:start + batch_size]]
            tokens = {k: v.to(self.device) for k, v in self.tokenize(batch).items()}
            out.append(self.forward_texts(tokens, normalize=normalize).float().cpu())
        self.train(was_training)
        if not out:
            return torch.empty(0, self.embed_dim)
        return torch.cat(out)[torch.argsort(torch.tensor(order))]

    def fingerprint(self) -> str:
        """A short hash of the weights, for feature caches (changes when any weight changes)."""
        h = hashlib.sha256(type(self).__name__.encode())
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "embed_dim": self.embed_dim, "token_dim": self.token_dim,
                "parameters": sum(p.numel() for p in self.parameters())}


def resolve_path(arg: str) -> Path | None:
    p = Path(arg).expanduser()
    return p if p.exists() else None
