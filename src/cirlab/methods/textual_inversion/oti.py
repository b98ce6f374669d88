"""SEARLE's optimisation-based textual inversion (OTI) and its concept regulariser.

For each image feature ``f``, OTI finds a pseudo-word token ``v`` minimising::

    lambda_cos * (1 - cos(f, T("a photo of $"; v)))
  + lambda_reg * E_{c ~ topk(f), p ~ phrases} (1 - cos(T(p(c)), T(p($); v)))

where ``T`` is the frozen text encoder, ``topk(f)`` are the image's ``top_k`` concepts by
zero-shot classification over the concept vocabulary, and the phrases stand in for
the paper's GPT-written ones (offline: fixed templates, configuration). The
regulariser keeps ``v`` in the region of real words so it composes with text.
Only ``v`` receives gradients (``torch.autograd.grad``); the backbone is untouched.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...backbones.base import Backbone, length_grouped
from .concepts import ConceptVocabulary
from .prompts import PromptTemplates

#: the 24 prompt templates SEARLE's OTI samples from at every step (PALAVRA's), ``{}`` = the pseudo word
PALAVRA_TEMPLATES: tuple[str, ...] = (
    "This is a photo of a {}", "This photo contains a {}", "A photo of a {}", "This is an illustration of a {}",
    "This illustration contains a {}", "An illustrations of a {}", "This is a sketch of a {}",
    "This sketch contains a {}", "A sketch of a {}", "This is a diagram of a {}", "This diagram contains a {}",
    "A diagram of a {}", "A {}", "We see a {}", "{}", "We see a {} in this photo", "We see a {} in this image",
    "We see a {} in this illustration", "We see a {} photo", "We see a {} image", "We see a {} illustration",
    "{} photo", "{} image", "{} illustration",
)

PHRASES: tuple[str, ...] = ("a photo of a {concept}", "a picture of a {concept}", "an image with a {concept}",
                            "there is a {concept}", "a close-up photo of a {concept}", "a {concept} in the center")


@dataclass
class OTIConfig:
    steps: int = 150
    lr: float = 2e-2
    weight_decay: float = 0.01
    lambda_cos: float = 1.0
    lambda_reg: float = 0.5
    top_k: int = 15
    phrases: tuple[str, ...] = PHRASES
    batch_size: int = 256
    seed: int = 0
    #: > 0: return the exponential moving average of the tokens over the steps (SEARLE's code: 0.99)
    ema: float = 0.0
    #: templates (``{}`` = the pseudo word) sampled per image at every step instead of the image prompt
    templates: tuple[str, ...] = ()
    #: std of the initial tokens (0: the std of the token-embedding matrix; SEARLE's code: 0.02)
    init_std: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phrases"] = list(self.phrases)
        d["templates"] = list(self.templates)
        return d


def _select(tokens: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[rows] for k, v in tokens.items()}


def _tokens(backbone: Backbone, texts: list[str]) -> dict[str, torch.Tensor]:
    return {k: v.to(backbone.device) for k, v in backbone.tokenize(texts).items()}


@dataclass
class ConceptRegulariser:
    """Precomputed text features of every (concept, phrase) pair and the phrases with the pseudo word."""

    backbone: Backbone
    vocab: ConceptVocabulary
    phrases: tuple[str, ...]
    concept_features: torch.Tensor = field(init=False)     # (C, P, D)
    classifier: torch.Tensor = field(init=False)           # (C, D): phrase-ensembled zero-shot classifier
    pseudo_phrase_tokens: dict[str, torch.Tensor] = field(init=False)  # P rows

    def __post_init__(self) -> None:
        texts = [p.format(concept=c) for c in self.vocab.words for p in self.phrases]
        feats = self.backbone.encode_texts(texts).to(self.backbone.device)
        self.concept_features = feats.view(len(self.vocab), len(self.phrases), -1)
        self.classifier = F.normalize(self.concept_features.mean(1), dim=-1)
        ph = self.backbone.placeholder
        self.pseudo_phrase_tokens = _tokens(self.backbone, [p.format(concept=ph) for p in self.phrases])

    def top_concepts(self, image_features: torch.Tensor, k: int) -> torch.Tensor:
        """(B, min(k, C)) concept indices, best first."""
        sims = F.normalize(image_features.to(self.classifier), dim=-1) @ self.classifier.T
        return sims.topk(min(k, len(self.vocab)), dim=1).indices

    def sampled_loss(self, pseudo: torch.Tensor, top: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One concept and one phrase per image, drawn with ``gen``; mean of ``1 - cos``."""
        b = len(pseudo)
        pick = torch.randint(top.shape[1], (b,), generator=gen)
        phrase = torch.randint(len(self.phrases), (b,), generator=gen)
        concept = top[torch.arange(b), pick.to(top.device)]
        target = self.concept_features[concept, phrase.to(concept.device)]
        tokens = _select(self.pseudo_phrase_tokens, phrase.to(self.backbone.device))
        out = length_grouped(self.backbone, tokens, lambda tk, rows: self.backbone.forward_texts_pseudo(tk, pseudo[rows]))
        return (1 - (out * target).sum(-1)).mean()

    def expected_loss(self, pseudo: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """The regulariser's expectation over all top concepts and phrases (deterministic)."""
        total = pseudo.new_zeros(())
        for p in range(len(self.phrases)):
            rows = torch.full((len(pseudo),), p, dtype=torch.long, device=self.backbone.device)
            out = self.backbone.forward_texts_pseudo(_select(self.pseudo_phrase_tokens, rows), pseudo)
            target = self.concept_features[top, p].mean(1)           # (B, D): mean target ~ mean cosine
            total = total + (1 - (out * target).sum(-1)).mean()
        return total / len(self.phrases)


class OTI:
    """Optimises pseudo tokens for image features; shared by SEARLE training and the ``searle-oti`` method."""

    def __init__(self, backbone: Backbone, vocab: ConceptVocabulary, prompts: PromptTemplates,
                 cfg: OTIConfig | None = None) -> None:
        self.backbone = backbone
        self.cfg = cfg or OTIConfig()
        self.prompts = prompts
        self.reg = ConceptRegulariser(backbone, vocab, tuple(self.cfg.phrases))
        self.image_tokens = _tokens(backbone, [prompts.image_prompt(backbone.placeholder)])
        ph = f" {backbone.placeholder} "
        self.template_tokens = _tokens(backbone, [t.format(ph) for t in self.cfg.templates]) if self.cfg.templates \
            else None
        self.init_std = self.cfg.init_std or float(backbone.token_embedding_weight().detach().float().std())

    def _image_tokens(self, n: int) -> dict[str, torch.Tensor]:
        return {k: v.expand(n, -1) for k, v in self.image_tokens.items()}

    def objective(self, features: torch.Tensor, pseudo: torch.Tensor, top: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """The OTI objective with the regulariser's expectation (deterministic; for monitoring and tests)."""
        f = F.normalize(features.to(pseudo), dim=-1)
        top = self.reg.top_concepts(f, self.cfg.top_k) if top is None else top
        txt = self.backbone.forward_texts_pseudo(self._image_tokens(len(f)), pseudo)
        cos_loss = (1 - (txt * f).sum(-1)).mean()
        return self.cfg.lambda_cos * cos_loss + self.cfg.lambda_reg * self.reg.expected_loss(pseudo, top)

    def initial_tokens(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return (torch.randn(n, self.backbone.token_dim, generator=gen) * self.init_std).to(self.backbone.device)

    def optimise(self, features: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """(N, D) image features -> (N, token_dim) pseudo tokens (detached, on the CPU)."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        out = []
        chunks = range(0, len(features), cfg.batch_size)
        bar = tqdm(total=len(chunks) * cfg.steps, desc="OTI", unit="step", disable=not progress)
        with torch.enable_grad():
            for start in chunks:
                f = F.normalize(features[start:start + cfg.batch_size].float().to(self.backbone.device), dim=-1)
                top = self.reg.top_concepts(f, cfg.top_k)
                v = self.initial_tokens(len(f), gen).requires_grad_(True)
                avg = v.detach().clone()
                opt = torch.optim.AdamW([v], lr=cfg.lr, weight_decay=cfg.weight_decay)
                img_tokens = self._image_tokens(len(f))
                for _ in range(cfg.steps):
                    if self.template_tokens is not None:  # one random template per image and step
                        rows = torch.randint(len(cfg.templates), (len(f),), generator=gen).to(self.backbone.device)
                        img_tokens = _select(self.template_tokens, rows)
                    txt = length_grouped(self.backbone, img_tokens,
                                         lambda tk, rows: self.backbone.forward_texts_pseudo(tk, v[rows]))
                    loss = cfg.lambda_cos * (1 - (txt * f).sum(-1)).mean()
                    if cfg.lambda_reg:
                        loss = loss + cfg.lambda_reg * self.reg.sampled_loss(v, top, gen)
                    (v.grad,) = torch.autograd.grad(loss, [v])
                    opt.step()
                    if cfg.ema:
                        avg.mul_(cfg.ema).add_(v.detach(), alpha=1 - cfg.ema)
                    bar.update(1)
                out.append((avg if cfg.ema else v).detach().cpu())
        bar.close()
        return torch.cat(out) if out else torch.empty(0, self.backbone.token_dim)
