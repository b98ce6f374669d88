"""Zero-shot set-up of IP-CIR on the built-in world (registered as the zero-shot trainers ``ip-cir`` and
``ip-cir-oracle``).

IP-CIR is training-free; its "trainer" only prepares the world analogs. ``ip-cir`` is the method: the
caption bank of ``world/train`` captions (the ``world`` captioner), the ``lexical`` rewriter (reads the
human text as English) and the ``t2i`` generator (unadapted style, text-to-image errors), or the
Fusion-Diff prior trained earlier in the run; none of them reads the world's grammar or renderer.
``ip-cir-oracle`` is its upper bound, labelled an oracle in every result: the ``world`` rewriter (the
grammar that generated the procedural texts) and the ``world-render`` generator (the gallery's renderer).
Options (``ctx.options["ip-cir"]`` / ``["ip-cir-oracle"]``): ``generator`` ("t2i" | "world-render" |
"fusion-diff" | a spec), ``rewriter`` (a rewriter spec), ``lam``, ``world_render_style``.
Writes ``OUT/ip-cir.json``.
"""
from __future__ import annotations

from .cig import caption_bank_dir, generator_spec, trainer_options
from .zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext

#: (generator choice, rewriter) of each configuration
CONFIGURATIONS = {"ip-cir": ("t2i", "lexical"), "ip-cir-oracle": ("world-render", "world")}


def _ip_cir(ctx: ZeroShotContext, trainer: str) -> str:
    from ..methods.ip_cir import IPCIRConfig

    generator, rewriter = CONFIGURATIONS[trainer]
    opts = trainer_options(ctx, trainer)
    cfg = IPCIRConfig(generator=generator_spec(ctx, trainer, default=generator),
                      captioner=f"world:{caption_bank_dir(ctx)}", rewriter=str(opts.get("rewriter", rewriter)),
                      lam=float(opts.get("lam", 0.5)), seed=ctx.seed)
    return f"ip-cir:{cfg.save(ctx.out / 'ip-cir.json')}"


@ZEROSHOT_TRAINERS.register("ip-cir", help="IP-CIR (training-free): world captioner, lexical rewriter, t2i generator "
                                           "(no oracle); writes ip-cir.json")
def train_ip_cir_zeroshot(ctx: ZeroShotContext) -> str:
    return _ip_cir(ctx, "ip-cir")


@ZEROSHOT_TRAINERS.register("ip-cir-oracle", help="IP-CIR ORACLE (upper bound, not ranked): world-grammar rewriter "
                                                  "and world-render generator; writes ip-cir.json")
def train_ip_cir_oracle(ctx: ZeroShotContext) -> str:
    return _ip_cir(ctx, "ip-cir-oracle")


__all__ = ["CONFIGURATIONS", "train_ip_cir_oracle", "train_ip_cir_zeroshot"]
