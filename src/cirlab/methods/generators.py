"""Proxy generators: (reference, modification text) -> imagined target content.

Generative CIR methods (CIG, IP-CIR) imagine the target before searching. What
imagines it is pluggable, created from a spec string like every other piece:

- an *embedding* generator returns target image embeddings in the backbone's
  joint space (the Fusion-Diff prior: ``fusion-diff:CHECKPOINT_DIR``);
- a *pixel* generator returns images, which the method encodes with its backbone
  (a diffusers pipeline for real use; the world's renderer as an analog).

Both kinds return one item per query; ``seed`` makes sampling repeatable.
"""
from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch
from PIL import Image

from ..backbones.base import Backbone
from ..registry import Registry, split_spec
from .base import QueryBatch


@runtime_checkable
class ProxyGenerator(Protocol):
    """Imagines one target per query of a batch."""

    #: "embedding": ``generate`` returns an (N, D) tensor, L2-normalised, in the backbone's space;
    #: "pixels": ``generate`` returns N PIL images.
    kind: Literal["embedding", "pixels"]
    #: whether ``generate`` needs ``batch.reference_images`` (pixels) rather than features only
    needs_pixels: bool

    def generate(self, batch: QueryBatch, seed: int = 0) -> torch.Tensor | list[Image.Image]: ...

    def config(self) -> dict: ...


PROXY_GENERATORS: Registry = Registry("proxy generator")


def create_proxy_generator(spec: str, backbone: Backbone) -> ProxyGenerator:
    """``create_proxy_generator("fusion-diff:ckpt/", backbone)``; factories take ``(arg, backbone=...)``."""
    from . import fusion_diff, proxies  # noqa: F401  (their modules register the generators)

    name, arg = split_spec(spec)
    gen = PROXY_GENERATORS.get(name)(arg, backbone=backbone)
    gen.spec = spec
    return gen


def proxy_embeddings(gen: ProxyGenerator, batch: QueryBatch, backbone: Backbone, seed: int = 0,
                     normalize: bool = True) -> torch.Tensor:
    """Run ``gen`` and return (N, D) target embeddings whatever its kind: L2-normalised, or (``normalize=False``)
    a pixel generator's images as the backbone's raw projected features (an embedding generator's outputs
    have no raw scale: they come back normalised either way)."""
    out = gen.generate(batch, seed=seed)
    if gen.kind == "pixels":
        feats = backbone.encode_images(list(out), normalize=normalize).float()
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats
    return torch.nn.functional.normalize(out.float(), dim=-1)


__all__ = ["PROXY_GENERATORS", "ProxyGenerator", "create_proxy_generator", "proxy_embeddings"]
