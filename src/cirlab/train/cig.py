"""Zero-shot set-up of CIG on the built-in world (registered as the zero-shot trainer ``cig``).

CIG trains nothing of its own here: it reuses a textual-inversion phi (``ctx.trained["searle"]`` when the
comparison trained SEARLE before it, else SEARLE is trained on ``world/train`` images with
``cirlab.train.textual_inversion.train_method``) and a proxy generator: the Fusion-Diff embedding prior
when it was trained in the same run and ``ctx.options["cig_generator"] == "fusion-diff"``, else the
``t2i`` text-to-image analog (not an oracle) over a caption bank of ``world/train`` captions (encoded once
into ``OUT/caption-bank``), or the ``world-render`` oracle when asked for.
Options (``ctx.options["cig"]``): ``generator`` ("t2i" | "world-render" | "fusion-diff" | a spec), ``weight``,
``second`` ("query" | "image"), ``world_render_style``, ``prompts``.

``train_cig_generator`` (``cirlab train cig``) fine-tunes a diffusers text-to-image pipeline's UNet on
image-caption *reconstruction with composed prompts*: each gallery image is the target of a prompt
"{reference description} that {modification}", made from its own description by taking one object out
of it and asking to add it back (world galleries, ``meta.objects``); images without a scene fall back to
their caption. Loss: noise prediction (the diffusion loss); VAE and text encoder frozen. The result is
a diffusers folder used as ``diffusers:OUT`` (CIG with a ``captioner`` prompts it the same way).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import CirlabError, DatasetError
from .estimate import RunEstimate
from .zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext


def inversion_spec(ctx: ZeroShotContext) -> str:
    """The SEARLE phi of this run, trained here when the run has none."""
    if "searle" in ctx.trained:
        return ctx.trained["searle"]
    from ..methods.textual_inversion.oti import OTIConfig
    from .textual_inversion import MethodTrainConfig, TrainingData, train_method

    quick = ctx.quick
    data = TrainingData(ctx.world / "train", 256 if quick else 8192)
    cfg = MethodTrainConfig(method="searle", steps=20 if quick else 500, batch_size=64 if quick else 256,
                            prompts=str(ctx.options.get("cig", {}).get("prompts", "world")), oti_images=64 if quick else 1024,
                            oti=OTIConfig(steps=5 if quick else 100, seed=ctx.seed), seed=ctx.seed)
    out = ctx.out / "searle"
    train_method(ctx.backbone, data, cfg, out, progress=ctx.progress)
    return f"searle:{out}"


def caption_bank_dir(ctx: ZeroShotContext) -> Path:
    """The train captions encoded once under ``OUT/caption-bank`` (the ``world`` captioner's bank)."""
    from ..methods.proxies.captioners import save_caption_bank

    return save_caption_bank(ctx.out / "caption-bank", ctx.world / "train", ctx.backbone,
                             max_captions=2000 if ctx.quick else 0, progress=ctx.progress)


def world_render_spec(ctx: ZeroShotContext, trainer: str) -> str:
    """``world-render:BANK`` (an oracle: the world's rewriter grammar and renderer)."""
    style = trainer_options(ctx, trainer).get("world_render_style", "real")
    return f"world-render:{caption_bank_dir(ctx)},style={style}"


def trainer_options(ctx: ZeroShotContext, trainer: str) -> dict[str, Any]:
    """``ctx.options[trainer]`` (``cirlab experiment generative --options '{"cig": {...}}'``), checked."""
    opts = ctx.options.get(trainer, {})
    if not isinstance(opts, dict):
        raise CirlabError(f"options[{trainer!r}] = {opts!r}: must be a JSON object")
    return opts


def generator_spec(ctx: ZeroShotContext, trainer: str, default: str = "t2i") -> str:
    """``options[trainer]["generator"]``: "t2i" (the non-oracle text-to-image analog, default), "world-render"
    (an oracle), "fusion-diff" or any generator spec."""
    choice = str(trainer_options(ctx, trainer).get("generator", default))
    if choice == "fusion-diff":
        spec = ctx.trained.get("fusion-diff")
        if not spec:
            raise CirlabError(f"{trainer}: generator=fusion-diff needs fusion-diff trained earlier in the same run "
                              f"(trained so far: {sorted(ctx.trained)})")
        return spec            # "fusion-diff:DIR" is both the method's and the generator's spec
    if choice == "world-render":
        return world_render_spec(ctx, trainer)
    if choice == "t2i":
        return f"t2i:{caption_bank_dir(ctx)}"
    return choice              # any other proxy-generator spec, used as given


@ZEROSHOT_TRAINERS.register("cig", help="CIG: SEARLE phi (reused or trained) + t2i / fusion-diff "
                                        "pseudo-target; writes cig.json")
def train_cig_zeroshot(ctx: ZeroShotContext) -> str:
    from ..methods.cig import CIGConfig

    if not (Path(ctx.world) / "train").is_dir():
        raise CirlabError(f"cig: {ctx.world}/train: not a world root")
    opts = trainer_options(ctx, "cig")
    cfg = CIGConfig(inversion=inversion_spec(ctx), generator=generator_spec(ctx, "cig"),
                    weight=float(opts.get("weight", 0.5)), second=str(opts.get("second", "query")), seed=ctx.seed)
    return f"cig:{cfg.save(ctx.out / 'cig.json')}"


#: ``cirlab experiment generative`` trains these first, so ``ctx.trained["searle"]`` is reused
train_cig_zeroshot.requires = ("searle",)  # type: ignore[attr-defined]


# ---- fine-tuning a diffusers pipeline on composed-prompt reconstruction ------------------------------

@dataclass
class CIGGeneratorConfig:
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-4
    max_images: int = 2048
    size: int = 0            # training resolution; 0: the pipeline's native size (unet sample size * VAE factor)
    composed: bool = True    # composed prompts from meta.objects (else every prompt is the caption)
    seed: int = 0
    log_every: int = 25


def composed_training_prompt(caption: str, meta: dict[str, Any], rng: random.Random, composed: bool = True) -> str:
    """A prompt whose target is this image: "{description without one object} that add {the object}"."""
    from ..methods.proxies.pixels import composed_prompt
    from ..world.scene import Scene
    from ..world.scene import caption as describe

    objs = meta.get("objects") if composed else None
    if not objs or len(objs) < 2:
        return caption
    scene = Scene.from_list(objs)
    o = rng.choice(scene.objects)
    where = f"in the {o.where}" if o.where == "center" else f"at the {o.where}"
    return composed_prompt(describe(scene.replace_obj(o, None)), f"add a {o.noun()} {where}")


def _pixels(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def train_cig_generator(pipeline_dir: str | Path, data: str | Path, out: str | Path, cfg: CIGGeneratorConfig,
                        progress: bool = True) -> dict[str, Any]:
    """Fine-tune the pipeline's UNet; write the whole pipeline (safetensors) + ``cig-generator.json`` to ``out``."""
    from diffusers import DiffusionPipeline

    from ..data import read_gallery

    if not Path(pipeline_dir).is_dir():
        raise CirlabError(f"cig generator: {pipeline_dir}: no such diffusers pipeline directory")
    try:
        pipe = DiffusionPipeline.from_pretrained(str(pipeline_dir))
    except (OSError, ValueError) as e:
        raise CirlabError(f"cig generator: cannot load {pipeline_dir}: {e}") from None
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise CirlabError(f"cig generator: {pipeline_dir} has no {name} (a Stable-Diffusion-style pipeline is needed)")
    gal = read_gallery(Path(data))
    n = min(len(gal), cfg.max_images)
    rows = [i for i in range(n) if gal.captions[i]]
    if not rows:
        raise DatasetError(f"cig generator: {data}: no captioned images in the gallery")
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    size = cfg.size or int(pipe.unet.config.sample_size) * factor
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    pipe.vae.requires_grad_(False).eval()
    pipe.text_encoder.requires_grad_(False).eval()
    with torch.no_grad():
        latents = torch.cat([pipe.vae.encode(torch.stack([_pixels(gal.paths[i], size) for i in rows[lo:lo + 64]])
                                             ).latent_dist.mean for lo in range(0, len(rows), 64)])
        latents = latents * pipe.vae.config.scaling_factor
    unet = pipe.unet
    unet.requires_grad_(True).train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_t = int(pipe.scheduler.config.num_train_timesteps)
    tok = pipe.tokenizer
    log: list[dict[str, Any]] = []
    running, t0 = 0.0, time.time()
    bar = tqdm(range(cfg.steps), desc="train cig generator", unit="step", disable=not progress)
    for step in RunEstimate("train cig generator", cfg.steps, shorten="--steps N for fewer", enabled=progress).wrap(bar):
        pick = torch.randint(0, len(rows), (min(cfg.batch_size, len(rows)),), generator=gen)
        prompts = [composed_training_prompt(gal.captions[rows[j]], gal.meta[rows[j]], rng, cfg.composed)
                   for j in pick.tolist()]
        with torch.no_grad():
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            hidden = pipe.text_encoder(ids)[0]
        x0 = latents[pick]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, n_t, (len(pick),), generator=gen)
        pred = unet(pipe.scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            k = (step % cfg.log_every) + 1
            log.append({"step": step + 1, "loss": round(running / k, 5), "seconds": round(time.time() - t0, 1)})
            running = 0.0
            bar.set_postfix(loss=f"{log[-1]['loss']:.4f}")
    unet.eval().requires_grad_(False)
    out = Path(out)
    pipe.save_pretrained(str(out), safe_serialization=True)
    summary = {"pipeline": str(pipeline_dir), "data": str(data), "images": len(rows), "size": size,
               "config": asdict(cfg), "log": log, "seconds": round(time.time() - t0, 1)}
    tmp = out / "cig-generator.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "cig-generator.json")
    return summary


__all__ = ["CIGGeneratorConfig", "caption_bank_dir", "composed_training_prompt", "generator_spec", "inversion_spec", "train_cig_generator", "train_cig_zeroshot", "trainer_options", "world_render_spec"]
