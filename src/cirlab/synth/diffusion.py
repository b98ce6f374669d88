"""A diffusers text-to-image generator with in-context triplet generation and CIR-LoRA (needs ``cirlab[gen]``).

In-context generation: one image of width ``2 * size`` shows the reference (left) and the
target (right); the prompt (``prompt_for``) describes both and the modification. Generated
images are split in two. **CIR-LoRA** (``cirlab.synth.cir_lora``) is injected into the UNet's
cross-attention projections; its router sees the mean-pooled text-encoder embedding of the
prompt. ``train_cir_lora`` fits it to a few stitched real triplets with the diffusion
(noise-prediction) loss, everything else frozen.

``DiffusionComponents`` holds a UNet, a VAE, a text encoder, a tokenizer (any callable
``texts -> {"input_ids": ...}``) and a scheduler. ``tiny_components`` builds a miniature,
randomly initialised set from configs (tests, CPU); a real run loads pretrained components
(``UNet2DConditionModel.from_pretrained(repo, subfolder="unet")``, etc.) on a GPU.
Classifier-free guidance is not implemented (guidance scale 1).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..data.jsonl import write_jsonl
from .cir_lora import CIRLoRAConfig, MoELoRALinear, adapter_parameters, inject_cir_lora, load_adapter, save_adapter, set_condition
from .triplets import TextTriplet

Tokenizer = Callable[[Sequence[str]], dict[str, torch.Tensor]]


def prompt_for(t: TextTriplet) -> str:
    return f"two panels. left: {t.reference}. right: {t.target}. the right panel is the left one after: {t.modification}"


@dataclass
class DiffusionComponents:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Tokenizer
    scheduler: Any
    size: int = 16           # side of one panel in pixels

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def freeze(self) -> None:
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False)
            m.eval()

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states (B, L, C), router condition (B, C) = masked mean of the hidden states)."""
        tok = self.tokenizer(list(prompts))
        ids = tok["input_ids"]
        mask = tok.get("attention_mask", torch.ones_like(ids)).float()
        h = self.text_encoder(ids).last_hidden_state
        cond = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return h, cond


def _tiny_unet_vae(size: int):
    """A two-block UNet (16-d cross-attention) and a two-block VAE for ``size``-pixel images, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=size // 2, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=size)
    return unet, vae


def tiny_components(vocab: Sequence[str], size: int = 16, seed: int = 0) -> DiffusionComponents:
    """A miniature random pipeline built from configs (no downloads): for tests and CPU smoke runs."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..backbones.tiny import WordTokenizer

    torch.manual_seed(seed)
    unet, vae = _tiny_unet_vae(size)
    tok = WordTokenizer(vocab, context=64)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok.vocab), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                      pad_token_id=tok.pad, bos_token_id=tok.bos, eos_token_id=tok.eos))
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="linear", clip_sample=False)
    comps = DiffusionComponents(unet, vae, te, tok, sched, size)
    comps.freeze()
    return comps


def random_sd_pipeline(out: str | os.PathLike[str], size: int = 16, max_length: int = 32, seed: int = 0) -> Path:
    """Write a miniature Stable-Diffusion pipeline with random weights to ``out`` (``save_pretrained`` layout).

    For checking the plumbing on a CPU without downloads (``cirlab train cig --pipeline OUT``, the
    ``diffusers:OUT`` generators): a ``size``-pixel VAE, a two-block UNet, a one-layer CLIP text encoder and
    a character-level CLIP tokenizer that cuts prompts at ``max_length`` tokens. Its images are noise.
    """
    import tempfile

    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in [chr(c) for c in range(97, 123)] + list(",.'0123456789$"):
        for t in (ch, ch + "</w>"):
            vocab.setdefault(t, len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=max_length)
    torch.manual_seed(seed)
    unet, vae = _tiny_unet_vae(size)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=max_length, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(num_train_timesteps=100, beta_schedule="linear",
                                                           clip_sample=False, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return Path(out)


def _to_tensor(img: Image.Image, h: int, w: int) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def stitch(reference: Image.Image, target: Image.Image, size: int) -> Image.Image:
    out = Image.new("RGB", (2 * size, size))
    out.paste(reference.convert("RGB").resize((size, size)), (0, 0))
    out.paste(target.convert("RGB").resize((size, size)), (size, 0))
    return out


def train_cir_lora(comps: DiffusionComponents, samples: Sequence[tuple[Image.Image, Image.Image, TextTriplet]],
                   cfg: CIRLoRAConfig, steps: int = 100, lr: float = 1e-3, batch_size: int = 4, seed: int = 0,
                   progress: bool = True) -> tuple[dict[str, MoELoRALinear], list[float]]:
    """Inject CIR-LoRA into ``comps.unet`` and fit it to stitched (reference | target) samples; returns the losses."""
    adapters = inject_cir_lora(comps.unet, cfg)
    params = adapter_parameters(adapters)
    opt = torch.optim.AdamW(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    s = comps.size
    pixels = torch.stack([_to_tensor(stitch(r, t, s), s, 2 * s) for r, t, _ in samples])
    hidden, cond = comps.encode_prompts([prompt_for(t) for _, _, t in samples])
    with torch.no_grad():
        latents = comps.vae.encode(pixels).latent_dist.mean * comps.vae.config.scaling_factor
    n_t = comps.scheduler.config.num_train_timesteps
    losses = []
    for _ in tqdm(range(steps), desc="CIR-LoRA", disable=not progress):
        rows = torch.randint(0, len(samples), (min(batch_size, len(samples)),), generator=g)
        noise = torch.randn(latents[rows].shape, generator=g)
        t = torch.randint(0, n_t, (len(rows),), generator=g)
        noisy = comps.scheduler.add_noise(latents[rows], noise, t)
        set_condition(adapters, cond[rows])
        pred = comps.unet(noisy, t, encoder_hidden_states=hidden[rows]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    set_condition(adapters, None)
    return adapters, losses


class DiffusersGenerator:
    """Text triplets -> image triplets by in-context generation (one stitched image per triplet)."""

    name = "diffusers"

    def __init__(self, comps: DiffusionComponents, adapter_dir: str | os.PathLike[str] | None = None,
                 steps: int = 20, seed: int = 0) -> None:
        self.comps, self.steps, self.seed = comps, steps, seed
        self.adapters: dict[str, MoELoRALinear] = {}
        if adapter_dir is not None:
            self.adapters, _ = load_adapter(comps.unet, adapter_dir)

    def check(self, t: TextTriplet) -> str | None:
        return None

    @torch.no_grad()
    def sample(self, triplets: Sequence[TextTriplet], seed: int = 0) -> list[tuple[Image.Image, Image.Image]]:
        c, s = self.comps, self.comps.size
        hidden, cond = c.encode_prompts([prompt_for(t) for t in triplets])
        if self.adapters:
            set_condition(self.adapters, cond)
        f = c.latent_factor
        g = torch.Generator().manual_seed(seed)
        lat = torch.randn((len(triplets), c.unet.config.in_channels, s // f, 2 * s // f), generator=g)
        lat = lat * c.scheduler.init_noise_sigma
        c.scheduler.set_timesteps(self.steps)
        for t in c.scheduler.timesteps:
            eps = c.unet(c.scheduler.scale_model_input(lat, t), t, encoder_hidden_states=hidden).sample
            lat = c.scheduler.step(eps, t, lat).prev_sample
        img = c.vae.decode(lat / c.vae.config.scaling_factor).sample
        arr = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = []
        for a in arr:
            whole = Image.fromarray(a)
            out.append((whole.crop((0, 0, s, s)), whole.crop((s, 0, 2 * s, s))))
        return out

    def generate(self, triplets: Sequence[TextTriplet], out: str | os.PathLike[str], progress: bool = True,
                 batch_size: int = 8) -> Path:
        root = Path(out)
        (root / "images").mkdir(parents=True, exist_ok=True)
        gallery, rows = [], []
        for lo in tqdm(range(0, len(triplets), batch_size), desc="generate", disable=not progress):
            chunk = triplets[lo:lo + batch_size]
            for n, (t, (ref, tgt)) in enumerate(zip(chunk, self.sample(chunk, self.seed + lo)), lo):
                ids = (f"gen-{n:06d}-r", f"gen-{n:06d}-t")
                for image_id, im, text in zip(ids, (ref, tgt), (t.reference, t.target)):
                    im.save(root / "images" / f"{image_id}.png")
                    gallery.append({"id": image_id, "path": f"images/{image_id}.png", "caption": text})
                rows.append({"id": f"gen-q{n:06d}", "reference": ids[0], "caption": t.modification,
                             "targets": [ids[1]], "meta": dict(t.meta)})
        write_jsonl(root / "gallery.jsonl", gallery)
        write_jsonl(root / "triplets.jsonl", rows)
        (root / "dataset.json").write_text(json.dumps({"name": "synthetic-diffusers", "generator": self.name,
                                                        "steps": self.steps, "queries": len(rows)}, indent=1))
        return root


__all__ = ["DiffusersGenerator", "DiffusionComponents", "prompt_for", "random_sd_pipeline", "save_adapter", "stitch",
           "tiny_components", "train_cir_lora"]
