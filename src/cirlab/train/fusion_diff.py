"""Training Fusion-Diff in two stages over a frozen backbone's features.

**Stage 1** (``train_prior``): the diffusion prior learns ``p(image embedding | caption
embedding)`` from the image-caption pairs of a gallery (``gallery.jsonl``: ``caption`` and
``meta.captions``; one caption drawn per image and step). Loss: MSE between the
prediction and ``x0`` (or ``eps``) at a uniformly drawn timestep; the caption is
replaced by the learned null text with probability ``cond_dropout``.

**Stage 2** (``train_adapter``): the prior is frozen; the fusion module and the
Control-Adapter are trained on *synthetic* triplets scripted by ``TemplateScripter`` and
rendered by ``WorldGenerator`` (never the dataset's own triplets). The prior is
conditioned on the modification text, the adapter injects the fused (reference, text)
feature, and the target is the target image's embedding. Loss: the same denoising MSE,
optionally + ``align_weight`` x InfoNCE between the fused feature and the target embedding
(makes the fused feature itself a query; off by default: on world/val it lowered the generated
embedding's retrieval).

Both stages write a checkpoint directory (safetensors + config.json) and, every
``save_every`` steps, a resumable training state (``train_state.safetensors`` +
``train_state.json``: optimiser moments, step, the data generator's and torch's RNG states), so
``resume=True`` continues to the same weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..backbones.base import Backbone
from ..data import load_dataset, read_gallery
from ..errors import CirlabError, DatasetError
from ..index import build_index
from ..methods.fusion_diff import (
    AdapterConfig,
    ControlAdapter,
    DDIMConfig,
    DDIMScheduler,
    EmbeddingPrior,
    FusionConfig,
    FusionDiffCheckpoint,
    FusionDiffPipeline,
    FusionModule,
    PriorConfig,
    SamplingConfig,
    load_fusion_diff,
)
from .estimate import RunEstimate
from .features import cached_text_features, triplet_features
from .losses import contrastive_loss
from .optim import adamw, autocast, check_precision
from .zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext


@dataclass
class PriorTrainConfig:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.0
    width: int = 256
    depth: int = 4
    prediction: str = "x0"
    cond_dropout: float = 0.1
    timesteps: int = 1000
    beta_schedule: str = "cosine"
    max_images: int | None = None
    seed: int = 0
    log_every: int = 100
    save_every: int = 1000
    precision: str = "fp32"               # forward pass: fp32 (exact) or bf16 (autocast; see cirlab.train.optim)

    def __post_init__(self) -> None:
        check_precision(self.precision, "fusion-diff prior precision")


@dataclass
class AdapterTrainConfig:
    triplets: int = 20000                 # synthetic triplets scripted and rendered
    steps: int = 5000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.0
    fusion_hidden: int = 512
    adapter_hidden: int = 256
    adapter_layers: int = 2
    align_weight: float = 0.0             # InfoNCE(fused, target) weight (0 chosen on world/val)
    temperature: float = 0.05
    generator: str = "world:real"         # synth generator spec (world[:unadapted|real|STYLE.json])
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(steps=1, mix=0.0))  # chosen on world/val
    seed: int = 0
    log_every: int = 100
    save_every: int = 1000
    precision: str = "fp32"               # forward pass: fp32 (exact) or bf16 (autocast; see cirlab.train.optim)

    def __post_init__(self) -> None:
        check_precision(self.precision, "fusion-diff adapter precision")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- a resumable optimisation loop ----------------------------------------------------------------

def _save_state(out: Path, opt: torch.optim.Optimizer, step: int, gen: torch.Generator, log: list) -> None:
    tensors: dict[str, torch.Tensor] = {"rng": gen.get_state(), "torch_rng": torch.get_rng_state()}  # + dropout's
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            for k, v in opt.state.get(p, {}).items():
                tensors[f"{gi}.{pi}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    save_file(tensors, str(out / "train_state.safetensors.tmp"))
    os.replace(out / "train_state.safetensors.tmp", out / "train_state.safetensors")
    (out / "train_state.json.tmp").write_text(json.dumps({"step": step, "log": log}))
    os.replace(out / "train_state.json.tmp", out / "train_state.json")


def _load_state(out: Path, opt: torch.optim.Optimizer, gen: torch.Generator) -> tuple[int, list]:
    meta = json.loads((out / "train_state.json").read_text())
    tensors = load_file(str(out / "train_state.safetensors"))
    gen.set_state(tensors.pop("rng"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            st = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"{gi}.{pi}.")}
            if st:
                opt.state[p] = st
    return int(meta["step"]), list(meta["log"])


def fit(params: list[torch.nn.Parameter], loss_fn: Callable[[torch.Generator], dict[str, torch.Tensor]], *,
        steps: int, lr: float, weight_decay: float, seed: int, log_every: int, desc: str,
        out: Path | None = None, save_every: int = 0, save: Callable[[list], None] | None = None,
        resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Minimise ``loss_fn(generator)["loss"]`` over ``params`` with AdamW (fused); returns the log (mean loss per
    window)."""
    opt = adamw(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    start, log = 0, []
    if resume and out is not None and (out / "train_state.json").is_file():
        start, log = _load_state(out, opt, gen)
    t0 = time.time()
    sums: dict[str, float] = {}
    count = 0
    bar = tqdm(range(start, steps), desc=desc, unit="step", disable=not progress, initial=start, total=steps)
    estimate = RunEstimate(desc, steps - start, f"resuming at step {start} of {steps}" if start else "",
                           "--steps N for fewer", enabled=progress)
    for step in estimate.wrap(bar):
        losses = loss_fn(gen)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        count += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            entry = {"step": step + 1, **{k: round(v / count, 5) for k, v in sums.items()},
                     "seconds": round(time.time() - t0, 1)}
            log.append(entry)
            sums, count = {}, 0
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
        if out is not None and save is not None and save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            save(log)
            _save_state(out, opt, step + 1, gen, log)
    return log


def _fingerprint(backbone: Backbone) -> str:
    return backbone.fingerprint()


# ---- stage 1: the prior ----------------------------------------------------------------------------

@dataclass
class PairData:
    """Image features (N, D) and, per image, the rows of its captions in ``text`` (M, D)."""

    image: torch.Tensor
    text: torch.Tensor
    caption_rows: list[list[int]]
    source: str

    _table: tuple[torch.Tensor, torch.Tensor, int] | None = field(default=None, init=False, repr=False)

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random images, each with one of its captions drawn uniformly.

        The caption draws are one ``randint(0, L)`` call, ``L`` the least common multiple of the caption
        counts, reduced modulo each image's count: torch's CPU generator turns a ``randint(0, k)`` into
        ``r % k`` of one 32-bit draw ``r`` per element, in order, and ``(r % L) % k == r % k`` when ``k``
        divides ``L``, so this draws exactly what one ``randint(0, len(captions))`` per image would."""
        idx = torch.randint(0, len(self.image), (n,), generator=gen)
        rows, counts, lcm = self._caption_table()
        if lcm < 2 ** 32:
            pick = torch.randint(0, lcm, (n,), generator=gen) % counts[idx]
            return self.image[idx], self.text[rows[idx, pick]]
        picks = [self.caption_rows[i][int(torch.randint(0, len(self.caption_rows[i]), (1,), generator=gen))]
                 for i in idx.tolist()]
        return self.image[idx], self.text[picks]

    def _caption_table(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(rows (N, max captions) padded with the first, counts (N,), lcm of the counts)."""
        if self._table is None:
            width = max(len(r) for r in self.caption_rows)
            rows = torch.tensor([r + r[:1] * (width - len(r)) for r in self.caption_rows], dtype=torch.long)
            counts = torch.tensor([len(r) for r in self.caption_rows], dtype=torch.long)
            self._table = (rows, counts, math.lcm(*{len(r) for r in self.caption_rows}))
        return self._table


def pair_data(backbone: Backbone, source: str | Path, cache_dir: str | Path, max_images: int | None = None,
              progress: bool = True) -> PairData:
    """Image-caption pairs of a gallery as features (images cached as an index under ``cache_dir`` and in the
    shared feature cache, captions in the shared text-feature cache: a later seed encodes neither)."""
    root = Path(source)
    if not root.exists():
        raise CirlabError(f"{root}: no such dataset directory or gallery")
    gal = read_gallery(root)
    keep = [n for n, (c, m) in enumerate(zip(gal.captions, gal.meta)) if c or (m.get("captions") or [])]
    if max_images:
        keep = keep[:max_images]
    if not keep:
        raise DatasetError(f"{root}: no captioned images (the prior trains on image-caption pairs: gallery.jsonl "
                           f"needs 'caption' or meta.captions)")
    sub = gal.subset([gal.ids[n] for n in keep])
    index = build_index(backbone, sub, Path(cache_dir) / f"pairs-{len(sub)}", progress=progress)
    image = F.normalize(index.vectors(list(sub.ids)).float(), dim=-1)
    texts: list[str] = []
    rows: list[list[int]] = []
    pos: dict[str, int] = {}
    for c, m in zip(sub.captions, sub.meta):
        opts = [x for x in (m.get("captions") or []) if isinstance(x, str)] or [c]
        r = []
        for x in opts:
            if x not in pos:
                pos[x] = len(texts)
                texts.append(x)
            r.append(pos[x])
        rows.append(r)
    text = cached_text_features(backbone, texts, progress=progress).float()  # shared cache: once per world
    return PairData(image, text, rows, str(root))


def new_prior(dim: int, cfg: PriorTrainConfig) -> tuple[EmbeddingPrior, DDIMScheduler]:
    torch.manual_seed(cfg.seed)
    prior = EmbeddingPrior(PriorConfig(dim, cfg.width, cfg.depth, cfg.prediction, 0.0, cfg.cond_dropout))
    return prior, DDIMScheduler(DDIMConfig(cfg.timesteps, cfg.beta_schedule))


def denoising_loss(pipe: FusionDiffPipeline, target: torch.Tensor, text: torch.Tensor, gen: torch.Generator,
                   fused: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of the network's x0 / eps prediction at a uniform random timestep."""
    prior, sched = pipe.prior, pipe.scheduler
    x0 = prior.to_space(target)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, sched.num_train_timesteps, (len(x0),), generator=gen)
    x_t = sched.add_noise(x0, noise, t)
    residuals = pipe.adapter(prior.to_space(fused), x_t, t) if fused is not None and pipe.adapter is not None else None
    out = prior(x_t, t, text, residuals)
    goal = x0 if prior.cfg.prediction == "x0" else noise
    return F.mse_loss(out, goal)


def train_prior(backbone: Backbone, data: PairData, cfg: PriorTrainConfig, out: str | Path | None = None,
                resume: bool = False, progress: bool = True) -> FusionDiffCheckpoint:
    prior, sched = new_prior(backbone.embed_dim, cfg)
    pipe = FusionDiffPipeline(prior, sched)
    ck = FusionDiffCheckpoint(pipe, SamplingConfig(), backbone.spec, _fingerprint(backbone), {})
    out_p = Path(out) if out else None
    if resume and out_p is not None and (out_p / "train_state.json").is_file():
        ck = load_fusion_diff(out_p, backbone)
        prior, pipe = ck.pipeline.prior, ck.pipeline

    def info(log: list) -> dict[str, Any]:
        return {"stage1": {"config": asdict(cfg), "data": data.source, "images": len(data.image),
                           "captions": len(data.text), "log": log}}

    def save(log: list) -> None:
        ck.training = info(log)
        ck.save(out_p)  # type: ignore[arg-type]

    def loss(gen: torch.Generator) -> dict[str, torch.Tensor]:
        img, txt = data.sample(cfg.batch_size, gen)
        with autocast(cfg.precision):
            return {"loss": denoising_loss(pipe, img, prior.drop_text(txt, gen), gen)}

    prior.train()
    t0 = time.time()
    log = fit(list(prior.parameters()), loss, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
              seed=cfg.seed, log_every=cfg.log_every, desc="fusion-diff stage 1 (prior)", out=out_p,
              save_every=cfg.save_every, save=save, resume=resume, progress=progress)
    pipe.eval()
    ck.training = info(log)
    ck.training["stage1"]["seconds"] = round(time.time() - t0, 1)
    if out_p is not None:
        ck.save(out_p)
        _clear_state(out_p)
    return ck


def _clear_state(out: Path) -> None:
    for name in ("train_state.json", "train_state.safetensors"):
        (out / name).unlink(missing_ok=True)


# ---- stage 2: fusion module + Control-Adapter on synthetic triplets -------------------------------

def heldout_combos(world_split: str | Path) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a world split's config holds out (none when unknown)."""
    p = Path(world_split) / "dataset.json"
    try:
        cfg = json.loads(p.read_text()).get("config", {})
    except (OSError, json.JSONDecodeError):
        return []
    return [tuple(x) for x in cfg.get("heldout", [])]  # type: ignore[misc]


def world_resolution(world_split: str | Path, default: int = 64) -> int:
    try:
        return int(json.loads((Path(world_split) / "dataset.json").read_text()).get("config", {})
                   .get("resolution", default))
    except (OSError, json.JSONDecodeError, ValueError):
        return default


def synthetic_triplets(out: str | Path, n: int, generator: str = "world:real", seed: int = 0,
                       banned: list[tuple[str, str]] | None = None, resolution: int = 64,
                       progress: bool = True) -> Path:
    """Script ``n`` text triplets (TemplateScripter) and render them (``generator``) into ``out`` (reused)."""
    from ..synth import TemplateScripter, TemplateSet, create_generator

    root = Path(out)
    stamp = {"n": n, "generator": generator, "seed": seed, "banned": [list(b) for b in banned or []],
             "resolution": resolution}
    done = root / "fusion-diff-synth.json"
    if (root / "dataset.json").is_file() and done.is_file() and json.loads(done.read_text()) == stamp:
        return root
    texts = TemplateScripter(TemplateSet(banned=list(banned or [])), seed=seed).script(n)
    create_generator(generator, resolution=resolution, seed=seed).generate(texts, root, progress=progress)
    (root / "fusion-diff-synth.json").write_text(json.dumps(stamp))
    return root


def train_adapter(backbone: Backbone, prior_ck: FusionDiffCheckpoint, synth_dir: str | Path, cfg: AdapterTrainConfig,
                  out: str | Path | None = None, cache_dir: str | Path | None = None, resume: bool = False,
                  progress: bool = True) -> FusionDiffCheckpoint:
    ds = load_dataset(synth_dir)
    cache = Path(cache_dir) if cache_dir else Path(synth_dir) / "features"
    feats = triplet_features(backbone, ds, cache, progress=progress)
    prior = prior_ck.pipeline.prior.eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    dim = backbone.embed_dim
    torch.manual_seed(cfg.seed)
    fusion = FusionModule(FusionConfig(dim, cfg.fusion_hidden))
    adapter = ControlAdapter(AdapterConfig(dim, prior.cfg.width, prior.cfg.depth, cfg.adapter_hidden,
                                           cfg.adapter_layers))
    pipe = FusionDiffPipeline(prior, prior_ck.pipeline.scheduler, adapter, fusion)
    ck = FusionDiffCheckpoint(pipe, cfg.sampling, backbone.spec, _fingerprint(backbone), dict(prior_ck.training))
    out_p = Path(out) if out else None
    if resume and out_p is not None and (out_p / "train_state.json").is_file():
        old = load_fusion_diff(out_p, backbone)
        fusion.load_state_dict(old.pipeline.fusion.state_dict())      # type: ignore[union-attr]
        adapter.load_state_dict(old.pipeline.adapter.state_dict())    # type: ignore[union-attr]
    scale = 1.0 / cfg.temperature

    def info(log: list) -> dict[str, Any]:
        return {**prior_ck.training, "stage2": {"config": cfg.to_dict(), "synthetic": str(synth_dir),
                                                "triplets": len(feats), "log": log}}

    def save(log: list) -> None:
        ck.training = info(log)
        ck.save(out_p)  # type: ignore[arg-type]

    def loss(gen: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(feats), (cfg.batch_size,), generator=gen)
        ref, txt, tgt = feats.reference[idx], feats.text[idx], feats.target[idx]
        with autocast(cfg.precision):
            fused = fusion(ref, txt)
            diff = denoising_loss(pipe, tgt, txt, gen, fused)
        out = {"loss": diff, "denoise": diff.detach()}
        if cfg.align_weight > 0:
            align = contrastive_loss(fused.float(), tgt, scale, target_ids=feats.target_ids[idx])
            out["loss"] = diff + cfg.align_weight * align
            out["align"] = align.detach()
        return out

    fusion.train()
    adapter.train()
    t0 = time.time()
    params = list(fusion.parameters()) + list(adapter.parameters())
    log = fit(params, loss, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
              log_every=cfg.log_every, desc="fusion-diff stage 2 (adapter)", out=out_p, save_every=cfg.save_every,
              save=save, resume=resume, progress=progress)
    pipe.eval()
    ck.training = info(log)
    ck.training["stage2"]["seconds"] = round(time.time() - t0, 1)
    if out_p is not None:
        ck.save(out_p)
        _clear_state(out_p)
    return ck


# ---- both stages, as a zero-shot trainer -----------------------------------------------------------

def quick_configs() -> tuple[PriorTrainConfig, AdapterTrainConfig]:
    """A budget that finishes in seconds (tests, smoke runs)."""
    return (PriorTrainConfig(steps=150, batch_size=64, width=64, depth=2, max_images=400, log_every=50),
            AdapterTrainConfig(triplets=300, steps=150, batch_size=64, fusion_hidden=64, adapter_hidden=32,
                               adapter_layers=1, log_every=50))


def train_fusion_diff(backbone: Backbone, world: str | Path, out: str | Path, prior_cfg: PriorTrainConfig,
                      adapter_cfg: AdapterTrainConfig, progress: bool = True) -> Path:
    """Stage 1 on ``world/train``'s image-caption pairs, stage 2 on synthetic triplets; returns the checkpoint dir."""
    world = Path(world)
    train = world / "train" if (world / "train").is_dir() else world
    out = Path(out)
    data = pair_data(backbone, train, out / "cache", prior_cfg.max_images, progress)
    prior_ck = train_prior(backbone, data, prior_cfg, out / "prior", progress=progress)
    synth = synthetic_triplets(out / "synthetic", adapter_cfg.triplets, adapter_cfg.generator, adapter_cfg.seed,
                               heldout_combos(train), world_resolution(train), progress)
    train_adapter(backbone, prior_ck, synth, adapter_cfg, out / "model", out / "cache", progress=progress)
    return out / "model"


@ZEROSHOT_TRAINERS.register("fusion-diff", help="Fusion-Diff: prior on train captions + adapter on synthetic triplets")
def train_zeroshot(ctx: ZeroShotContext) -> str:
    """Both stages on ``ctx.world``; ``ctx.options["fusion-diff"]`` may hold ``{"prior": {...}, "adapter": {...}}``
    overrides of the config fields."""
    prior_cfg, adapter_cfg = quick_configs() if ctx.quick else (PriorTrainConfig(), AdapterTrainConfig())
    opts = dict(ctx.options.get("fusion-diff", {}))
    prior_cfg = replace(prior_cfg, **{"seed": ctx.seed, **opts.get("prior", {})})
    adapter_cfg = replace(adapter_cfg, **{"seed": ctx.seed, **opts.get("adapter", {})})
    path = train_fusion_diff(ctx.backbone, ctx.world, ctx.out, prior_cfg, adapter_cfg, ctx.progress)
    return f"fusion-diff:{path}"

__all__ = ["AdapterTrainConfig", "PairData", "PriorTrainConfig", "denoising_loss", "fit", "heldout_combos",
           "pair_data", "quick_configs", "synthetic_triplets", "train_adapter", "train_fusion_diff", "train_prior", "train_zeroshot"]
