"""IP-CIR ("Imagine and Seek", CVPR 2025; training-free): search with an imagined proxy of the target.

1. Captions: the reference is described by a captioner and the description rewritten by an LLM with the
   modification text: ``c_ref``, ``c_tgt`` (``cirlab.methods.proxies``; the world uses analogs: the
   ``world`` captioner, the ``lexical`` rewriter and the ``t2i`` generator; the ``world`` rewriter and
   ``world-render`` generator are oracles, for upper bounds).
2. Text side: ``t = T(c_tgt)`` (``text_side="caption"``, the paper's LLM-rewrite retrieval), or any
   method spec (e.g. ``searle:DIR``) whose query is used instead.
3. The imagined proxy: a proxy generator (pixels through the backbone, or an embedding generator) gives
   ``f_p``; the **robust proxy feature** is
   ``p = normalize(a * f_p + b * f_ref + c * (T(c_tgt) - T(c_ref)))`` (proxy, query image, semantic
   perturbation; ``a, b, c`` = ``proxy_weight, reference_weight, perturbation_weight``).
4. **Balanced similarity** of a gallery image ``g``: ``s = (1 - lam) * <t, g> + lam * <t, g> * <p, g>``.

``compose`` returns ``t`` (the first stage); ``rescore`` applies the balanced similarity to the candidates
(``rescore_depth`` of them; the retriever passes their stored features). ``balanced_scores`` scores any
set of gallery features directly.

The authors' CIRCO script (``retrieval_circo.py``) is an option, ``robust="max-ratio"``:

* ``f_aug`` = mean of the normalised features of ``n_proxies`` proxies (seeds ``seed, seed + 1, ...``),
  ``d`` = mean over ``n_captions`` caption sets of ``T(c_tgt) - T(c_ref)`` (normalised text features),
  ``f_src`` the normalised reference feature; the text side is the mean of the sets' ``T(c_tgt)`` (the
  script weights them by a softmax of their debiasing scores; cirlab averages). Each further set asks the
  rewriter again (an LLM at a temperature above 0 answers differently);
* ``p = b * (max f_aug / max f_src) * f_src + c * (max f_aug / max d) * d + a * f_aug``, **not**
  normalised; the maxima are taken over the whole (queries x dimensions) tensor of a batch, as the
  script does over its one batch of all queries (``official_robust_feature``);
* the score ``w * s_t + (1 - w) * s_t * s_p`` is the balanced similarity with ``lam = 1 - w``
  (the script's ``fusion_weight`` w: 0.65 for ViT-L/14, 0.3 for ViT-G/14), over the whole gallery
  (``whole_gallery=True``: every gallery image is re-scored, not only the text side's top candidates).

Spec ``ip-cir:CONFIG`` (a JSON file or a directory holding ``ip-cir.json``, fields of ``IPCIRConfig``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..errors import CirlabError
from . import METHODS
from .base import Method, QueryBatch
from .cig import _load_config, _save_config
from .generators import ProxyGenerator, create_proxy_generator, proxy_embeddings

PROXY_KEY = "ip_cir_proxy"
CAPTION_SETS = "ip_cir_caption_sets"


@dataclass
class IPCIRConfig:
    generator: str                      # proxy generator spec ("t2i:DIR", "diffusers:DIR", "fusion-diff:DIR"; oracle
                                        # "world-render:DIR")
    captioner: str                      # captioner spec ("world:DIR" analog, "hf:MODEL")
    rewriter: str = "lexical"           # rewriter spec ("lexical" analog, "llm:URL"; oracle "world")
    text_side: str = "caption"          # "caption" (T(target description)) or a method spec
    proxy_weight: float = 1.0           # a
    reference_weight: float = 0.5       # b
    perturbation_weight: float = 1.0    # c
    lam: float = 0.5                    # weight of the balanced (product) term
    rescore_depth: int = 200            # candidates of the text side that the balanced similarity re-ranks
    seed: int = 0
    robust: str = "normalized"          # "normalized" (above) or "max-ratio" (the authors' script)
    n_proxies: int = 1                  # proxies per query (seeds seed .. seed + n - 1), features averaged
    n_captions: int = 1                 # target descriptions per query (the rewriter asked n times), averaged
    whole_gallery: bool = False         # re-score every gallery image (the authors' script) instead of the top

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise CirlabError(f"ip-cir: lam={self.lam}: must be in [0, 1]")
        if self.rescore_depth < 1:
            raise CirlabError(f"ip-cir: rescore_depth={self.rescore_depth}: must be >= 1")
        if self.robust not in ROBUST_FEATURES:
            raise CirlabError(f"ip-cir: robust={self.robust!r}: use one of {', '.join(ROBUST_FEATURES)}")
        if self.n_proxies < 1:
            raise CirlabError(f"ip-cir: n_proxies={self.n_proxies}: must be >= 1")
        if self.n_captions < 1:
            raise CirlabError(f"ip-cir: n_captions={self.n_captions}: must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def load(path: str | Path) -> IPCIRConfig:
        return _load_config(path, "ip-cir.json", IPCIRConfig)

    def save(self, path: str | Path) -> Path:
        return _save_config(path, "ip-cir.json", self.to_dict())


ROBUST_FEATURES = ("normalized", "max-ratio")
#: ``rescore_depth`` of a method that re-scores the whole gallery (the retriever caps it at the gallery size)
WHOLE_GALLERY = 1 << 62


def official_robust_feature(f_src: torch.Tensor, f_aug: torch.Tensor, d: torch.Tensor, s_w: float = 1.0,
                            t_w: float = 1.0, a_w: float = 1.0) -> torch.Tensor:
    """``s_w * (max f_aug / max f_src) * f_src + t_w * (max f_aug / max d) * d + a_w * f_aug`` (not normalised;
    each max over the whole tensor), as the authors' retrieval script computes the robust proxy feature.

    Where ``d`` has no positive entry (every rewritten caption encodes like its reference caption, so the
    perturbation is zero), the script's ratio is 0/0; the perturbation term is then dropped instead of
    filling every score with NaN."""
    top = f_aug.max()
    d_top = d.max()
    d_term = (t_w * (top / d_top)) * d if bool(d_top > 0) else torch.zeros_like(d)
    return s_w * (top / f_src.max()) * f_src + d_term + a_w * f_aug


def balanced_similarity(text_scores: torch.Tensor, proxy_scores: torch.Tensor, lam: float) -> torch.Tensor:
    """``(1 - lam) * s_t + lam * s_t * s_p``, elementwise."""
    return (1 - lam) * text_scores + lam * text_scores * proxy_scores


class IPCIR(Method):
    name = "ip-cir"
    expensive = True  # a generated proxy per query, then re-scoring

    def __init__(self, backbone: Backbone, cfg: IPCIRConfig, generator: ProxyGenerator | None = None,
                 captioner: Any = None, rewriter: Any = None) -> None:
        super().__init__(backbone)
        from . import create_method
        from .proxies import create_captioner, create_rewriter

        self.cfg = cfg
        self.generator = generator or create_proxy_generator(cfg.generator, backbone)
        self.captioner = captioner or create_captioner(cfg.captioner, backbone)
        self.rewriter = rewriter or create_rewriter(cfg.rewriter)
        self.text_method = None if cfg.text_side == "caption" else create_method(cfg.text_side, backbone)
        self.rescore_depth = WHOLE_GALLERY if cfg.whole_gallery else cfg.rescore_depth
        self.needs_pixels = bool(self.generator.needs_pixels or self.captioner.needs_pixels
                                 or (self.text_method is not None and self.text_method.needs_pixels))
        self.needs_raw = bool(self.text_method is not None and self.text_method.needs_raw)

    def captions(self, batch: QueryBatch) -> tuple[list[str], list[str]]:
        from .proxies import imagine_captions

        return imagine_captions(batch, self.captioner, self.rewriter)

    def caption_sets(self, batch: QueryBatch) -> tuple[list[str], list[list[str]]]:
        """(reference descriptions, ``n_captions`` lists of target descriptions), cached in the batch."""
        ref, first = self.captions(batch)
        if CAPTION_SETS not in batch.extra:
            batch.extra[CAPTION_SETS] = [first] + [self.rewriter.rewrite(ref, list(batch.texts))
                                                   for _ in range(self.cfg.n_captions - 1)]
        return ref, batch.extra[CAPTION_SETS]

    @torch.no_grad()
    def text_query(self, batch: QueryBatch) -> torch.Tensor:
        if self.text_method is not None:
            return F.normalize(self.text_method.compose(batch).float().cpu(), dim=-1)
        sets = self.caption_sets(batch)[1]
        if len(sets) == 1:
            return self.encode_texts(sets[0])
        return F.normalize(torch.stack([self.encode_texts(tgt) for tgt in sets]).mean(0), dim=-1)

    @torch.no_grad()
    def proxy_feature(self, batch: QueryBatch) -> torch.Tensor:
        """The mean of the normalised features of ``n_proxies`` proxies per query (seeds seed, seed + 1, ...)."""
        c = self.cfg
        return torch.stack([proxy_embeddings(self.generator, batch, self.backbone, c.seed + i).cpu()
                            for i in range(c.n_proxies)]).mean(0)

    @torch.no_grad()
    def robust_proxy(self, batch: QueryBatch) -> torch.Tensor:
        """``normalize(a * f_p + b * f_ref + c * (T(c_tgt) - T(c_ref)))``, or the authors' max-ratio feature."""
        c = self.cfg
        ref_caps, sets = self.caption_sets(batch)
        f_p = self.proxy_feature(batch)
        f_ref = F.normalize(batch.reference_features.float().cpu(), dim=-1)
        t_ref = self.encode_texts(ref_caps)
        pert = torch.stack([self.encode_texts(tgt) - t_ref for tgt in sets]).mean(0)
        if c.robust == "max-ratio":
            return official_robust_feature(f_ref, f_p, pert, c.reference_weight, c.perturbation_weight,
                                           c.proxy_weight)
        return F.normalize(c.proxy_weight * f_p + c.reference_weight * f_ref + c.perturbation_weight * pert, dim=-1)

    def compose(self, batch: QueryBatch) -> torch.Tensor:
        t = self.text_query(batch)
        batch.extra[PROXY_KEY] = self.robust_proxy(batch)
        return t

    def balanced_scores(self, batch: QueryBatch, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Balanced similarity of every query to gallery ``features`` ((M, D) shared or (N, M, D) per query)."""
        proxy = batch.extra.get(PROXY_KEY)
        if proxy is None:
            proxy = batch.extra[PROXY_KEY] = self.robust_proxy(batch)
        feats = features.float()
        if feats.dim() == 2:
            s_t, s_p = queries.float() @ feats.T, proxy @ feats.T
        else:
            s_t = torch.einsum("nd,nmd->nm", queries.float(), feats)
            s_p = torch.einsum("nd,nmd->nm", proxy, feats)
        return balanced_similarity(s_t, s_p, self.cfg.lam)

    def rescore(self, batch: QueryBatch, queries: torch.Tensor, candidate_ids: list[list[str]],
                candidate_scores: torch.Tensor, candidate_features: torch.Tensor | None) -> torch.Tensor:
        if candidate_features is None:
            raise CirlabError("ip-cir: the index cannot return stored features; the balanced similarity needs them "
                              "(use the exact index)")
        return self.balanced_scores(batch, queries, candidate_features)

    def config(self) -> dict[str, Any]:
        out = {"name": self.name, **self.cfg.to_dict(), "generator_config": self.generator.config(),
               "captioner_config": self.captioner.config(), "rewriter_config": self.rewriter.config()}
        if self.text_method is not None:
            out["text_side_config"] = self.text_method.config()
        return out


@METHODS.register("ip-cir")
def _ip_cir(arg: str, backbone: Backbone) -> Method:
    if not arg:
        raise CirlabError("ip-cir: give a config, e.g. ip-cir:runs/ip-cir/ip-cir.json ({\"generator\": "
                          "\"t2i:DIR\", \"captioner\": \"world:DIR\", \"lam\": 0.5})")
    return IPCIR(backbone, IPCIRConfig.load(arg))


__all__ = ["IPCIR", "IPCIRConfig", "WHOLE_GALLERY", "balanced_similarity", "official_robust_feature"]
