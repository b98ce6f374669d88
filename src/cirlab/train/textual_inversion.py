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

``recipe="paper"`` (``paper_config``) trains as the authors' code does instead: phi on the *raw*
projected features (``raw_input``), the authors' phi shapes and optimiser settings, and the inference
preset of the method recorded in the checkpoint:

- **Pic2Word**: symmetric InfoNCE between the normalised image feature and ``T("a photo of $"; phi(f_raw))``
  at the backbone's own CLIP logit scale; AdamW lr 1e-4, weight decay 0.1, linear warm-up then cosine;
  phi 3 layers, hidden 512, ReLU, dropout 0.1; the pseudo token at the first ``$``.
- **SEARLE**: OTI with the loss ``(Lcos + 0.5 Lreg) / 1.5``, one of PALAVRA's 24 templates per image and
  step, tokens initialised from N(0, 0.02^2), 350 steps (lr 2e-2, weight decay 0.01) and the EMA (0.99) of
  the tokens; phi (hidden 4d, GELU, dropout 0.5) distilled by NT-Xent between ``phi(f_raw)`` and the OTI
  tokens in token space (temperature 0.25) + 0.75 x the concept regulariser; AdamW lr 1e-4.
- **LinCIR**: ``v = phi(t_raw + u * g)`` with ``u ~ U(0, 1)`` per caption and ``g ~ N(0, I)`` (not
  normalised); MSE between the raw text feature of the masked caption with ``v`` and ``t_raw``; phi hidden
  4d, GELU, dropout 0.5; AdamW lr 1e-4; every ``$`` gets the pseudo token.

Training resumes: with a checkpoint directory, ``fit`` saves its state (phi, optimiser, step, random
generator; SEARLE's OTI tokens) to ``train-state.safetensors`` there every ``save_every`` steps, and a
later run with the same settings continues from it.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..backbones.base import Backbone, length_grouped
from ..backbones.encoding import encode_images
from ..data import read_gallery
from ..errors import CirlabError, DatasetError
from ..methods.textual_inversion.concepts import ConceptVocabulary
from ..methods.textual_inversion.oti import OTI, PALAVRA_TEMPLATES, OTIConfig
from ..methods.textual_inversion.phi import Checkpoint, Phi, PhiConfig
from ..methods.textual_inversion.prompts import PromptTemplates, get_templates
from .estimate import RunEstimate
from .features import cached_text_features
from .optim import adamw


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
    recipe: str = "cirlab"               # "cirlab" or "paper" (the authors' losses on raw features)
    warmup: int = 0                      # linear warm-up steps; with "cosine" the lr then decays to 0
    schedule: str = "constant"           # "constant" or "cosine"
    save_every: int = 100                # steps between saved training states (resume)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise CirlabError(f"recipe {self.recipe!r}: use one of {', '.join(RECIPES)}")
        if self.schedule not in ("constant", "cosine"):
            raise CirlabError(f"schedule {self.schedule!r}: use constant or cosine")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["oti"] = self.oti.to_dict()
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "MethodTrainConfig":
        d = dict(d)
        oti = d.pop("oti", {})
        oti = {k: tuple(v) if k in ("phrases", "templates") else v for k, v in oti.items()}
        return MethodTrainConfig(**d, oti=OTIConfig(**oti))


RECIPES = ("cirlab", "paper")


def paper_config(method: str, embed_dim: int, **overrides: Any) -> MethodTrainConfig:
    """The authors' settings for ``method`` on a backbone with ``embed_dim``-d features (``overrides`` win:
    steps, batch size and warm-up are the papers' scale, far beyond a test's)."""
    common: dict[str, Any] = {"recipe": "paper", "layers": 3}
    per: dict[str, dict[str, Any]] = {
        "pic2word": {"lr": 1e-4, "weight_decay": 0.1, "hidden": 512, "dropout": 0.1, "warmup": 10_000,
                     "schedule": "cosine", "batch_size": 128},
        "searle": {"lr": 1e-4, "weight_decay": 0.01, "hidden": 4 * embed_dim, "dropout": 0.5, "temperature": 0.25,
                   "lambda_reg": 0.75, "lambda_con": 1.0,
                   "oti": OTIConfig(steps=350, lr=2e-2, weight_decay=0.01, lambda_cos=1 / 1.5, lambda_reg=0.5 / 1.5,
                                    top_k=15, ema=0.99, templates=PALAVRA_TEMPLATES, init_std=0.02)},
        "lincir": {"lr": 1e-4, "weight_decay": 0.01, "hidden": 4 * embed_dim, "dropout": 0.5, "noise": 1.0,
                   "batch_size": 512},
    }
    if method not in per:
        raise CirlabError(f"no paper recipe for {method!r}; known: {', '.join(per)}")
    cfg = {**common, **per[method], **overrides}
    if isinstance(overrides.get("oti"), dict):  # OTI fields over the recipe's OTI settings
        cfg["oti"] = replace(per[method].get("oti", OTIConfig()), **overrides["oti"])
    return MethodTrainConfig(method=method, **cfg)


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

    def image_features(self, backbone: Backbone, progress: bool = True, normalize: bool = True) -> torch.Tensor:
        key = f"{backbone.fingerprint()}:{'normalised' if normalize else 'raw'}"
        if key not in self._features:  # through the shared per-image feature cache: encoded once across runs
            self._features[key] = encode_images(backbone, self.paths, device=None, amp=False,
                                                progress=progress, normalize=normalize)
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


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2B normalised vectors of both views: each one's positive is its pair, its negatives
    every other vector of either view (SEARLE's phi distillation)."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    n = len(a)
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    pair = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, pair)


def lr_factor(step: int, cfg: MethodTrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup) / span)))
    return 1.0


STATE = "train-state.safetensors"


class TrainState:
    """phi, the optimiser, the step, the generator and extra tensors in one safetensors file (no pickle),
    written atomically; read back only when it was written with the same settings (``key``)."""

    def __init__(self, directory: str | Path | None, key: dict[str, Any]) -> None:
        self.path = Path(directory) / STATE if directory is not None else None
        self.key = json.dumps(key, sort_keys=True, default=str)

    def save(self, phi: Phi, opt: torch.optim.Optimizer, step: int, gen: torch.Generator, log: list[dict[str, Any]],
             extra: dict[str, torch.Tensor]) -> None:
        if self.path is None:
            return
        tensors = {f"phi.{k}": v.detach().cpu().contiguous() for k, v in phi.state_dict().items()}
        for i, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
        tensors["generator"] = gen.get_state()
        tensors["torch_rng"] = torch.get_rng_state()  # dropout draws from it
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in extra.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(STATE + ".tmp")
        save_file(tensors, str(tmp), metadata={"key": self.key, "step": str(step), "log": json.dumps(log)})
        os.replace(tmp, self.path)

    def extra(self) -> dict[str, torch.Tensor]:
        loaded = self._load()
        return {k[6:]: v for k, v in loaded[0].items() if k.startswith("extra.")} if loaded else {}

    def _load(self) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        if self.path is None or not self.path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != self.key:
            return None  # another run's state: this run starts afresh (and overwrites it)
        return load_file(str(self.path)), meta

    def restore(self, phi: Phi, opt: torch.optim.Optimizer, gen: torch.Generator) -> tuple[int, list[dict[str, Any]]]:
        """Load a saved state into phi, opt and gen; returns (steps done, log so far) or (0, [])."""
        loaded = self._load()
        if loaded is None:
            return 0, []
        tensors, meta = loaded
        phi.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("phi.")})
        sd = opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        sd["state"] = state
        opt.load_state_dict(sd)
        gen.set_state(tensors["generator"])
        torch.set_rng_state(tensors["torch_rng"])
        return int(meta["step"]), json.loads(meta.get("log", "[]"))


def fit(phi: Phi, loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor], n: int,
        cfg: MethodTrainConfig, desc: str, progress: bool = True, state: TrainState | None = None,
        extra: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """Minimise ``loss_fn(batch indices, generator)`` over phi's parameters only (the backbone gets no grads);
    with ``state``, resume from and save to it."""
    params = [p for p in phi.parameters()]
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, log = state.restore(phi, opt, gen) if state is not None else (0, [])
    phi.train()
    t0 = time.time()
    running, last = 0.0, start
    bar = tqdm(range(start, cfg.steps), desc=desc, unit="step", disable=not progress, initial=start,
               total=cfg.steps)
    estimate = RunEstimate(desc, cfg.steps - start, shorten="--steps N for fewer", enabled=progress)
    for step in estimate.wrap(bar):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg)
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
        if state is not None and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps):
            state.save(phi, opt, step + 1, gen, log, extra or {})
    phi.eval()
    return log


def _new_phi(backbone: Backbone, cfg: MethodTrainConfig, activation: str) -> Phi:
    torch.manual_seed(cfg.seed)
    return Phi(PhiConfig(backbone.embed_dim, backbone.token_dim, cfg.hidden, cfg.layers, activation,
                         cfg.dropout, raw_input=cfg.recipe == "paper")).to(backbone.device)


def _prompts(cfg: MethodTrainConfig) -> PromptTemplates:
    """The prompt templates: ``cfg.prompts``; with the paper recipe, the method's official ones (its preset)."""
    if cfg.recipe != "paper":
        return get_templates(cfg.prompts)
    from ..benchmarks.presets import get_preset

    preset = get_preset(cfg.method, "cirr")
    return PromptTemplates("a photo of $", preset.query_template, preset.pseudo_at)


def _state(state_dir: str | Path | None, backbone: Backbone, data: "TrainingData", cfg: MethodTrainConfig
           ) -> TrainState:
    key = {k: v for k, v in cfg.to_dict().items() if k not in ("steps", "log_every", "save_every")}
    return TrainState(state_dir, {"config": key, "backbone": backbone.spec, "fingerprint": backbone.fingerprint(),
                                  "data": data.source, "items": len(data.paths)})


def logit_scale(backbone: Backbone) -> float:
    """The backbone's CLIP logit scale (exp of the learned parameter), Pic2Word's temperature; 100 if it has none."""
    for owner in (backbone, getattr(backbone, "model", None)):
        p = getattr(owner, "logit_scale", None)
        if isinstance(p, torch.Tensor):
            return float(p.detach().exp().clamp(max=100.0))
    return 100.0


def _vocabulary(backbone: Backbone, cfg: MethodTrainConfig) -> ConceptVocabulary:
    return ConceptVocabulary.from_file(cfg.concepts) if cfg.concepts else ConceptVocabulary.for_backbone(backbone)


def train_pic2word(backbone: Backbone, data: TrainingData, cfg: MethodTrainConfig, progress: bool = True,
                   state_dir: str | Path | None = None) -> Checkpoint:
    prompts = _prompts(cfg)
    paper = cfg.recipe == "paper"
    feats = data.image_features(backbone, progress, normalize=not paper).float().to(backbone.device)
    temperature = 1 / logit_scale(backbone) if paper else cfg.temperature
    phi = _new_phi(backbone, cfg, "relu")

    def loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        f = feats[idx]
        txt = backbone.forward_texts_pseudo(_image_prompt_tokens(backbone, prompts, len(f)), phi(f),
                                            first_only=prompts.first_only)
        return info_nce(F.normalize(f, dim=-1), txt, temperature)

    log = fit(phi, loss, len(feats), cfg, "train pic2word", progress, _state(state_dir, backbone, data, cfg))
    return _checkpoint("pic2word", phi, prompts, backbone, cfg, data, log, images=len(feats),
                       temperature=temperature)


def train_searle(backbone: Backbone, data: TrainingData, cfg: MethodTrainConfig, progress: bool = True,
                 state_dir: str | Path | None = None) -> Checkpoint:
    prompts = _prompts(cfg)
    paper = cfg.recipe == "paper"
    feats = data.image_features(backbone, progress, normalize=not paper).float().to(backbone.device)
    feats = feats[: cfg.oti_images]
    oti = OTI(backbone, _vocabulary(backbone, cfg), prompts, cfg.oti)
    state = _state(state_dir, backbone, data, cfg)
    saved = state.extra().get("oti_tokens")
    # v*: (N, token_dim); OTI normalises the features itself (its losses are cosines)
    targets = (saved if saved is not None else oti.optimise(feats, progress=progress)).to(backbone.device)
    with torch.no_grad():
        target_txt = torch.cat([backbone.forward_texts_pseudo(_image_prompt_tokens(backbone, prompts, len(t)), t)
                                for t in targets.split(256)])
        top = oti.reg.top_concepts(feats, cfg.oti.top_k)
    scale = oti.init_std ** 2
    phi = _new_phi(backbone, cfg, "gelu")

    def loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        v = phi(feats[idx])
        if paper:  # NT-Xent between predicted and OTI tokens in token space + the concept regulariser
            return nt_xent(v, targets[idx], cfg.temperature) + cfg.lambda_reg * oti.reg.sampled_loss(v, top[idx], gen)
        total = F.mse_loss(v, targets[idx], reduction="none").sum(-1).mean() / (scale * backbone.token_dim)
        if cfg.lambda_con:
            txt = backbone.forward_texts_pseudo(_image_prompt_tokens(backbone, prompts, len(v)), v)
            total = total + cfg.lambda_con * info_nce(txt, target_txt[idx], cfg.temperature)
        if cfg.lambda_reg:
            total = total + cfg.lambda_reg * oti.reg.sampled_loss(v, top[idx], gen)
        return total

    log = fit(phi, loss, len(feats), cfg, "train searle phi", progress, state, {"oti_tokens": targets})
    ck = _checkpoint("searle", phi, prompts, backbone, cfg, data, log, images=len(feats),
                     concepts=list(oti.reg.vocab.words))
    ck.tensors["oti_tokens"] = targets.cpu()
    return ck


def train_lincir(backbone: Backbone, data: TrainingData, cfg: MethodTrainConfig, progress: bool = True,
                 state_dir: str | Path | None = None) -> Checkpoint:
    prompts = _prompts(cfg)
    paper = cfg.recipe == "paper"
    vocab = _vocabulary(backbone, cfg)
    pairs = [(c, m) for c in data.caption_list() if (m := vocab.mask_keywords(c, backbone.placeholder))]
    if not pairs:
        raise DatasetError(f"{data.source}: no caption contains a concept word to mask "
                           f"(vocabulary of {len(vocab)} words: {', '.join(vocab.words[:10])}...)")
    captions, masked = [p[0] for p in pairs], [p[1] for p in pairs]
    feats = cached_text_features(backbone, captions, normalize=not paper, progress=progress).to(backbone.device)
    phi = _new_phi(backbone, cfg, "gelu")
    dim = feats.shape[1]

    def loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        t = feats[idx]
        u = torch.rand(len(t), 1, generator=gen).to(t)
        tok = _tokens(backbone, [masked[i] for i in idx.tolist()])
        if paper:  # raw text feature + U(0,1) * N(0, I), MSE on raw features, every $ replaced
            g = torch.randn(t.shape, generator=gen).to(t)
            v = phi(t + cfg.noise * u * g)
            out = length_grouped(backbone, tok, lambda tk, rows: backbone.forward_texts_pseudo(tk, v[rows],
                                                                                               normalize=False))
            return F.mse_loss(out, t)
        g = torch.randn(t.shape, generator=gen).to(t) / dim ** 0.5
        v = phi(F.normalize(t + cfg.noise * u * g, dim=-1))
        out = length_grouped(backbone, tok, lambda tk, rows: backbone.forward_texts_pseudo(tk, v[rows]))
        return ((out - t) ** 2).sum(-1).mean()

    log = fit(phi, loss, len(feats), cfg, "train lincir", progress, _state(state_dir, backbone, data, cfg))
    return _checkpoint("lincir", phi, prompts, backbone, cfg, data, log, captions=len(captions),
                       concepts=list(vocab.words))


def _checkpoint(method: str, phi: Phi, prompts: PromptTemplates, backbone: Backbone, cfg: MethodTrainConfig,
                data: TrainingData, log: list[dict[str, Any]], **extra: Any) -> Checkpoint:
    training = {"config": cfg.to_dict(), "data": data.source, "log": log, **extra}
    return Checkpoint(method, phi.cpu().eval(), prompts, backbone.spec, backbone.fingerprint(), training,
                      preset=method if cfg.recipe == "paper" else "")


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """``module``'s parameters without gradients inside the block (autograd then keeps nothing for their
    gradients), restored after."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


TRAINERS: dict[str, Callable[..., Checkpoint]] = {
    "pic2word": train_pic2word, "searle": train_searle, "lincir": train_lincir}


def train_method(backbone: Backbone, data: TrainingData, cfg: MethodTrainConfig, out: str | Path | None = None,
                 progress: bool = True) -> Checkpoint:
    """Train ``cfg.method`` and, with ``out``, save the checkpoint there (``<method>:<out>`` loads it)."""
    if cfg.method not in TRAINERS:
        raise CirlabError(f"unknown textual-inversion method {cfg.method!r}; known: {', '.join(TRAINERS)}")
    t0 = time.time()
    with frozen(backbone):
        ck = TRAINERS[cfg.method](backbone, data, cfg, progress, state_dir=out)
    ck.training["seconds"] = round(time.time() - t0, 1)
    if out is not None:
        ck.save(out)
    return ck
