"""Zero-shot set-up of IP-CIR on the built-in world (registered as the zero-shot trainer ``ip-cir``).

IP-CIR is training-free; its "trainer" only prepares the world analogs: the caption bank of
``world/train`` captions (the captioner analog), the rule-based rewriter, and the proxy generator
(world-render, or the Fusion-Diff prior trained earlier in the run). Options (``ctx.options["ip-cir"]``):
``generator`` ("world-render" | "fusion-diff" | a spec), ``lam``, ``world_render_style``.
Writes ``OUT/ip-cir.json``.
"""
from __future__ import annotations

from .cig import generator_spec, trainer_options
from .zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext


@ZEROSHOT_TRAINERS.register("ip-cir", help="IP-CIR (training-free): world analogs of captioner/LLM/generator; "
                                           "writes ip-cir.json")
def train_ip_cir_zeroshot(ctx: ZeroShotContext) -> str:
    from ..methods.ip_cir import IPCIRConfig
    from ..methods.proxies.captioners import save_caption_bank

    bank = save_caption_bank(ctx.out / "caption-bank", ctx.world / "train", ctx.backbone,
                             max_captions=2000 if ctx.quick else 0, progress=ctx.progress)
    opts = trainer_options(ctx, "ip-cir")
    cfg = IPCIRConfig(generator=generator_spec(ctx, "ip-cir"), captioner=f"world:{bank}",
                      rewriter="world", lam=float(opts.get("lam", 0.5)), seed=ctx.seed)
    return f"ip-cir:{cfg.save(ctx.out / 'ip-cir.json')}"


__all__ = ["train_ip_cir_zeroshot"]
