"""CIG ("Generative Zero-Shot Composed Image Retrieval", CVPR 2025): imagine the target, invert it, fuse.

1. The query's own pseudo-word composition: ``q1 = T("a photo of $ that {text}"; phi(f_ref))`` from a
   textual-inversion method (``searle:DIR``, ``pic2word:DIR``, ``lincir:DIR``, ``searle-oti``).
2. A pseudo-target from the composed query: a proxy generator (``cirlab.methods.generators``) gives its
   image embedding ``f_gen`` (an embedding generator directly, a pixel generator through the backbone).
   With ``captioner`` set, the reference is described first and a diffusers generator is prompted with
   "{description} that {text}" (the prompts ``cirlab train cig`` fine-tunes it on).
3. Back to a token by the same inversion: ``v_gen = phi(f_gen)``, composed again,
   ``q2 = T(template; v_gen)`` (``second="query"``: the query template with the text, the default;
   ``second="image"``: the image template "a photo of $" alone).
4. Fusion at the text-embedding level: ``q = normalize((1 - w) * q1 + w * q2)``.

Spec ``cig:CONFIG`` where CONFIG is a JSON file (or a directory holding ``cig.json``) with the fields of
``CIGConfig``; ``cirlab experiment`` writes one with the zero-shot trainer ``cig``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..errors import CirlabError
from . import METHODS
from .base import Method, QueryBatch
from .generators import ProxyGenerator, create_proxy_generator, proxy_embeddings
from .textual_inversion.methods import PseudoWordMethod


@dataclass
class CIGConfig:
    inversion: str                 # a pseudo-word method spec, e.g. "searle:runs/searle"
    generator: str                 # a proxy generator spec, e.g. "world-render:world/train" or "fusion-diff:ckpt"
    weight: float = 0.5            # w: weight of the pseudo-target's embedding q2
    second: str = "query"          # q2's template: "query" (with the text) or "image" ("a photo of $")
    seed: int = 0                  # generator seed
    captioner: str | None = None   # describes the reference for a pixel generator's composed prompt

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise CirlabError(f"cig: weight={self.weight}: must be in [0, 1]")
        if self.second not in ("query", "image"):
            raise CirlabError(f"cig: second={self.second!r}: use 'query' or 'image'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def load(path: str | Path) -> CIGConfig:
        return _load_config(path, "cig.json", CIGConfig)

    def save(self, path: str | Path) -> Path:
        return _save_config(path, "cig.json", self.to_dict())


def _load_config(path: str | Path, default_name: str, cls: type) -> Any:
    p = Path(path)
    if p.is_dir():
        p = p / default_name
    if not p.is_file():
        raise CirlabError(f"{p}: no such config file (write one with the fields {[f.name for f in fields(cls)]})")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CirlabError(f"{p}: not JSON ({e.msg} at line {e.lineno})") from None
    known = {f.name for f in fields(cls)}
    if not isinstance(d, dict) or set(d) - known:
        raise CirlabError(f"{p}: unknown field(s) {sorted(set(d) - known) if isinstance(d, dict) else d!r}; "
                          f"known: {sorted(known)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise CirlabError(f"{p}: {e}") from None


def _save_config(path: str | Path, default_name: str, d: dict[str, Any]) -> Path:
    p = Path(path)
    if p.suffix != ".json":
        p = p / default_name
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(d, indent=1))
    tmp.replace(p)
    return p


class CIG(Method):
    name = "cig"
    expensive = True  # a generated proxy per query

    def __init__(self, backbone: Backbone, cfg: CIGConfig, inversion: PseudoWordMethod | None = None,
                 generator: ProxyGenerator | None = None) -> None:
        super().__init__(backbone)
        from . import (
            create_method,
            proxies,  # noqa: F401  (registers the pixel generators)
        )

        self.cfg = cfg
        inv = inversion or create_method(cfg.inversion, backbone)
        if not isinstance(inv, PseudoWordMethod):
            raise CirlabError(f"cig: inversion={cfg.inversion!r} is not a pseudo-word (textual inversion) method; "
                              f"use searle:DIR, pic2word:DIR, lincir:DIR or searle-oti")
        self.inversion = inv
        self.generator = generator or create_proxy_generator(cfg.generator, backbone)
        self.captioner = None
        if cfg.captioner:
            from .proxies import create_captioner

            self.captioner = create_captioner(cfg.captioner, backbone)
        self.needs_pixels = bool(self.generator.needs_pixels or inv.needs_pixels
                                 or (self.captioner is not None and self.captioner.needs_pixels))
        # raw reference features when the inversion or the generator's own phi take them (the official modules)
        self.needs_raw = bool(inv.needs_raw or getattr(self.generator, "needs_raw", False))

    def second_texts(self, texts: list[str]) -> list[str]:
        inv = self.inversion
        if self.cfg.second == "query":
            return inv.query_texts(texts)
        return [inv.prompts.image_prompt(self.backbone.placeholder)] * len(texts)

    @torch.no_grad()
    def pseudo_target(self, batch: QueryBatch, normalize: bool = True) -> torch.Tensor:
        """(N, D) image embeddings of the imagined targets: normalised, or raw (``normalize=False``)."""
        from .proxies.pixels import REFERENCE_CAPTIONS

        if self.captioner is not None and REFERENCE_CAPTIONS not in batch.extra:
            batch.extra[REFERENCE_CAPTIONS] = self.captioner.caption(batch)
        return proxy_embeddings(self.generator, batch, self.backbone, self.cfg.seed, normalize=normalize)

    @torch.no_grad()
    def compose_parts(self, batch: QueryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(q1, q2): the query's own composition and the pseudo-target's, both normalised."""
        dev = self.backbone.device
        q1 = F.normalize(self.inversion.compose(batch).float(), dim=-1)
        # phi sees the imagined target as it sees a reference: raw when it was trained on raw features
        target = self.pseudo_target(batch, normalize=not self.inversion.needs_raw)
        tokens2 = self.inversion.pseudo_tokens(target.to(dev))
        tok = {k: v.to(dev) for k, v in self.backbone.tokenize(self.second_texts(list(batch.texts))).items()}
        q2 = F.normalize(self.backbone.forward_texts_pseudo(tok, tokens2.to(dev)).float(), dim=-1)
        return q1.cpu(), q2.cpu()

    def compose(self, batch: QueryBatch) -> torch.Tensor:
        q1, q2 = self.compose_parts(batch)
        w = self.cfg.weight
        return F.normalize((1 - w) * q1 + w * q2, dim=-1)

    def config(self) -> dict[str, Any]:
        out = {"name": self.name, **self.cfg.to_dict(), "inversion_config": self.inversion.config(),
               "generator_config": self.generator.config()}
        if self.captioner is not None:
            out["captioner_config"] = self.captioner.config()
        return out


@METHODS.register("cig")
def _cig(arg: str, backbone: Backbone) -> Method:
    if not arg:
        raise CirlabError("cig: give a config, e.g. cig:runs/cig/cig.json "
                          "({\"inversion\": \"searle:DIR\", \"generator\": \"world-render:DIR\", \"weight\": 0.5})")
    return CIG(backbone, CIGConfig.load(arg))


__all__ = ["CIG", "CIGConfig"]
