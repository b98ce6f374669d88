"""Training the mapping networks of Pic2Word, SEARLE and LinCIR on a frozen backbone.

Data is a dataset directory's gallery (``gallery.jsonl`` or an image folder): its
images (Pic2Word, SEARLE) or its captions (LinCIR, which never sees an image).
Triplets are never read. Each trainer returns a ``Checkpoint`` (phi + prompt
templates + settings) that ``save`` writes as safetensors + config.json.

Losses (``T`` = frozen text encoder, ``f`` = image feature, ``v = phi(.)``):

- **Pic2Word**: symmetric InfoNCE between ``f`` and ``T("a photo of $"; phi(f))`` over the batch.
- **SEARLE**: OTI tokens ``v*`` for ``oti_images`` images (see ``methods/textual_inversion/oti.py``),
  then phi is distilled: ``||phi(f) - v*||^2 / s^2`` (``s``: std of the token embeddings) +
  ``lambda_con`` * InfoNCE between ``T("a photo of $"; phi(f))`` and ``T("a photo of $"; v*)`` +
  ``lambda_reg`` * the concept regulariser on ``phi(f)``.
- **LinCIR** (self-masking projection): caption ``c``, ``t = T(c)``; ``v = phi(normalize(t + noise * u * g))``
  with ``u ~ U(0, 1)`` per caption and ``g ~ N(0, I/D)``; the caption with its key words (runs of
  concept words) replaced by ``$`` must encode to ``t``: ``||T(mask(c); v) - t||^2``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbones.base import Backbone
from ..data import read_gallery
from ..errors import CirlabError, DatasetError
from ..methods.textual_inversion.concepts import ConceptVocabulary
from ..methods.textual_inversion.oti import OTI, OTIConfig
from ..methods.textual_inversion.phi import Checkpoint, Phi, PhiConfig
from ..methods.textual_inversion.prompts import PromptTemplates, get_templates
from .estimate import RunEstimate


@dataclass
class MethodTrainConfig:
    method: str
    steps: int = 500
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.01
    hidden: int = 512
    layers: int = 3
    dropout: float = 0.1
    prompts: str = "photo"               # a preset of PRESETS or a query template with $ and {text}
    temperature: float = 0.05            # InfoNCE (Pic2Word, SEARLE's contrastive term)
    noise: float = 1.0                   # LinCIR: scale of the noise added to the text feature
    oti_images: int = 1024               # SEARLE: images inverted by OTI, phi's distillation set
    oti: OTIConfig = field(default_factory=OTIConfig)
    lambda_con: float = 1.0              # SEARLE phi: contrastive term
    lambda_reg: float = 0.1              # SEARLE phi: concept regulariser
    concepts: str | None = None          # a word list instead of the tokenizer-derived vocabulary
    seed: int = 0
    log_every: int = 50

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["oti"] = self.oti.to_dict()
        return d


class TrainingData:
    """The images and captions of a gallery; image features are encoded once and cached."""

    def __init__(self, source: str | Path, max_images: int | None = None) -> None:
        root = Path(source)
        if not root.exists():
            raise CirlabError(f"{root}: no such dataset directory or gallery")
        gal = read_gallery(root)
        n = len(gal) if not max_images else min(max_images, len(gal))
        if n == 0:
            raise DatasetError(f"{root}: the gallery is empty")
        self.source = str(root)
        self.paths = list(gal.paths[:n])
        self.captions: list[list[str]] = []
        for c, m in zip(gal.captions[:n], gal.meta[:n]):
            opts = [x for x in (m.get("captions") or []) if isinstance(x, str)]
            self.captions.append(opts or ([c] if c else []))
        self._features: dict[str, torch.Tensor] = {}

    def image_features(self, backbone: Backbone, progress: bool = True) -> torch.Tensor:
        key = backbone.fingerprint()
        if key not in self._features:
            self._features[key] = backbone.encode_images(self.paths, progress=progress)
        return self._features[key]

    def caption_list(self) -> list[str]:
        caps = [c for opts in self.captions for c in opts]
        if not caps:
            raise DatasetError(f"{self.source}: no captions in the gallery (LinCIR trains on captions: "
                               f"gallery.jsonl needs 'caption' or meta.captions)")
        return caps


def _tokens(backbone: Backbone, texts: list[str]) -> dict[str, torch.Tensor]:
    return {k: v.to(backbone.device) for k, v in backbone.tokenize(texts).items()}


def _image_prompt_tokens(backbone: Backbone, prompts: PromptTemplates, n: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(n, -1) for k, v in _tokens(backbone, [prompts.image_prompt(backbone.placeholder)]).items()}


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = a @ b.T / temperature
    gt = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, gt) + F.cross_entropy(logits.T, gt)) / 2


def fit(phi: Phi, loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor], n: int,
        cfg: MethodTrainConfig, desc: str, progress: bool = True) -> list[dict[str, Any]]:
    """Minimise ``loss_fn(batch indices, generator)`` over phi's parameters only (the backbone gets no grads)."""
    params = [p for p in phi.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    phi.train()
    log: list[dict[str, Any]] = []
    t0 = time.time()
    running, last = 0.0, 0
    bar = tqdm(range(cfg.steps), desc=desc, unit="step", disable=not progress)
    for step in RunEstimate(desc, cfg.steps, shorten="--steps N for fewer", enabled=progress).wrap(bar):
        idx = torch.randperm(n, generator=gen)[:cfg.batch_size]
        loss = loss_fn(idx, gen)
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        running += loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            entry = {"step": step + 1, "loss": round(running / (step + 1 - last), 5),
                     "seconds": round(time.time() - t0, 1)}
            running, last = 0.0, step + 1
            log.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
    phi.eval()
    return log


def _new_phi(backbone: Backbone, cfg: MethodTrainConfig, activation: str) -> Phi:
    torch.manual_seed(cfg.seed)
    return Phi(PhiConfig(backbone.embed_dim, backbone.token_dim, cfg.hidden, cfg.layers, activation,
                         cfg.dropout)).to(backbone.device)


def _vocabulary(backbone: Backbone, cfg: MethodTrainConfig) -> ConceptVocabulary:
    return ConceptVocabulary.from_file(cfg.concepts) if cfg.concepts else ConceptVocabulary.for_backbone(backbone)


def train_pic2word(backbone: Backbone, data: TrainingData, cfg: MethodTrainConfig, progress: bool = True
                   ) -> Checkpoint:
    prompts = get_templates(cfg.prompts)
    feats = F.normalize(data.image_features(backbone, progress).float(), dim=-1).to(backbone.device)
    phi = _new_phi(backbone, cfg, "relu")

    def loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        f = feats[idx]
        txt = backbone.forward_texts_pseudo(_image_prompt_tokens(backbone, prompts, len(f)), phi(f))
        return info_nce(f, txt, cfg.temperature)

    log = fit(phi, loss, len(feats), cfg, "train pic2word", progress)
    return _checkpoint("pic2word", phi, prompts, backbone, cfg, data, log, images=len(feats))


def train_searle(backbone: Backbone, data: TrainingData, cfg: MethodTrainConfig, progress: bool = True
                 ) -> Checkpoint:
    prompts = get_templates(cfg.prompts)
    feats = F.normalize(data.image_features(backbone, progress).float(), dim=-1).to(backbone.device)
    feats = feats[: cfg.oti_images]
    oti = OTI(backbone, _vocabulary(backbone, cfg), prompts, cfg.oti)
    targets = oti.optimise(feats, progress=progress).to(backbone.device)       # v*: (N, token_dim)
    with torch.no_grad():
        target_txt = torch.cat([backbone.forward_texts_pseudo(_image_prompt_tokens(backbone, prompts, len(t)), t)
                                for t in targets.split(256)])
        top = oti.reg.top_concepts(feats, cfg.oti.top_k)
    scale = oti.init_std ** 2
    phi = _new_phi(backbone, cfg, "gelu")

    def loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        v = phi(feats[idx])
        total = F.mse_loss(v, targets[idx], reduction="none").sum(-1).mean() / (scale * backbone.token_dim)
        if cfg.lambda_con:
            txt = backbone.forward_texts_pseudo(_image_prompt_tokens(backbone, prompts, len(v)), v)
            total = total + cfg.lambda_con * info_nce(txt, target_txt[idx], cfg.temperature)
        if cfg.lambda_reg:
            total = total + cfg.lambda_reg * oti.reg.sampled_loss(v, top[idx], gen)
        return total

    log = fit(phi, loss, len(feats), cfg, "train searle phi", progress)
    ck = _checkpoint("searle", phi, prompts, backbone, cfg, data, log, images=len(feats),
                     concepts=list(oti.reg.vocab.words))
    ck.tensors["oti_tokens"] = targets.cpu()
    return ck


def train_lincir(backbone: Backbone, data: TrainingData, cfg: MethodTrainConfig, progress: bool = True
                 ) -> Checkpoint:
    prompts = get_templates(cfg.prompts)
    vocab = _vocabulary(backbone, cfg)
    pairs = [(c, m) for c in data.caption_list() if (m := vocab.mask_keywords(c, backbone.placeholder))]
    if not pairs:
        raise DatasetError(f"{data.source}: no caption contains a concept word to mask "
                           f"(vocabulary of {len(vocab)} words: {', '.join(vocab.words[:10])}...)")
    captions, masked = [p[0] for p in pairs], [p[1] for p in pairs]
    feats = backbone.encode_texts(captions, progress=progress).to(backbone.device)
    phi = _new_phi(backbone, cfg, "gelu")
    dim = feats.shape[1]

    def loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        t = feats[idx]
        u = torch.rand(len(t), 1, generator=gen).to(t)
        g = torch.randn(t.shape, generator=gen).to(t) / dim ** 0.5
        v = phi(F.normalize(t + cfg.noise * u * g, dim=-1))
        out = backbone.forward_texts_pseudo(_tokens(backbone, [masked[i] for i in idx.tolist()]), v)
        return ((out - t) ** 2).sum(-1).mean()

    log = fit(phi, loss, len(feats), cfg, "train lincir", progress)
    return _checkpoint("lincir", phi, prompts, backbone, cfg, data, log, captions=len(captions),
                       concepts=list(vocab.words))


def _checkpoint(method: str, phi: Phi, prompts: PromptTemplates, backbone: Backbone, cfg: MethodTrainConfig,
                data: TrainingData, log: list[dict[str, Any]], **extra: Any) -> Checkpoint:
    training = {"config": cfg.to_dict(), "data": data.source, "log": log, **extra}
    return Checkpoint(method, phi.cpu().eval(), prompts, backbone.spec, backbone.fingerprint(), training)


TRAINERS: dict[str, Callable[[Backbone, TrainingData, MethodTrainConfig, bool], Checkpoint]] = {
    "pic2word": train_pic2word, "searle": train_searle, "lincir": train_lincir}


def train_method(backbone: Backbone, data: TrainingData, cfg: MethodTrainConfig, out: str | Path | None = None,
                 progress: bool = True) -> Checkpoint:
    """Train ``cfg.method`` and, with ``out``, save the checkpoint there (``<method>:<out>`` loads it)."""
    if cfg.method not in TRAINERS:
        raise CirlabError(f"unknown textual-inversion method {cfg.method!r}; known: {', '.join(TRAINERS)}")
    t0 = time.time()
    ck = TRAINERS[cfg.method](backbone, data, cfg, progress)
    ck.training["seconds"] = round(time.time() - t0, 1)
    if out is not None:
        ck.save(out)
    return ck
