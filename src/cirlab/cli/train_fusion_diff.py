"""``cirlab train fusion-diff-prior`` (stage 1) and ``cirlab train fusion-diff`` (stage 2, or both stages)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from .common import set_threads


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--backbone", default="tiny:world", help="frozen backbone spec")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=1000, help="steps between resumable snapshots")
    p.add_argument("--resume", action="store_true", help="continue from OUT's train_state.* if present")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (small models: 1 is often fastest)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="forward-pass precision: fp32 (default) or bf16 autocast (faster on CPUs with AMX / "
                        "AVX512-BF16, slower without; not bit-exact, see docs/fusion-diff.md)")


def register_fusion_diff_training(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser("fusion-diff-prior", help="Fusion-Diff stage 1: the diffusion prior on image-caption pairs",
                        description="Train the text-conditioned diffusion prior over image embeddings on a gallery's "
                                    "image-caption pairs (gallery.jsonl captions). Never reads triplets.")
    p.add_argument("--data", required=True, type=Path, help="dataset directory or gallery with captions")
    _common(p)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--prediction", choices=("x0", "eps"), default="x0")
    p.add_argument("--cond-dropout", type=float, default=0.1)
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--beta-schedule", choices=("cosine", "linear"), default="cosine")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N captioned images")
    p.set_defaults(func=run_prior)

    a = tsub.add_parser("fusion-diff", help="Fusion-Diff stage 2: fusion module + Control-Adapter on synthetic "
                                            "triplets (stage 1 too with --data and no --prior)",
                        description="Freeze a stage-1 prior and train the fusion module and the zero-initialised "
                                    "Control-Adapter on synthetic triplets (TemplateScripter + the world renderer), "
                                    "never the dataset's triplets. Use the result as --methods fusion-diff:OUT.")
    a.add_argument("--prior", type=Path, default=None, help="stage-1 checkpoint; omitted: train one into OUT/prior")
    a.add_argument("--data", type=Path, default=None,
                   help="the world's train split: captions for stage 1 (when no --prior), and its held-out "
                        "(colour, shape) pairs and resolution, which the synthetic triplets respect")
    _common(a)
    a.add_argument("--steps", type=int, default=5000)
    a.add_argument("--prior-steps", type=int, default=2000, help="stage 1 steps when no --prior")
    a.add_argument("--triplets", type=int, default=20000, help="synthetic triplets to script and render")
    a.add_argument("--generator", default="world:real", help="synthetic triplet generator, world[:unadapted|real|STYLE.json]")
    a.add_argument("--synthetic", type=Path, default=None, help="where to render them (default OUT/synthetic)")
    a.add_argument("--fusion-hidden", type=int, default=512)
    a.add_argument("--adapter-hidden", type=int, default=256)
    a.add_argument("--adapter-layers", type=int, default=2)
    a.add_argument("--align-weight", type=float, default=0.0,
                   help="weight of an extra InfoNCE(fused, target) loss (0 = diffusion loss only; chosen on world/val)")
    a.add_argument("--mix", type=float, default=0.0,
                   help="default query mix weight of the fused feature (recorded; 0 chosen on world/val)")
    a.add_argument("--sample-steps", type=int, default=1, help="default DDIM steps (recorded; 1 chosen on world/val)")
    a.add_argument("--samples", type=int, default=1, help="default samples averaged per query (recorded)")
    a.set_defaults(func=run_adapter)


def _setup(args: argparse.Namespace):
    from ..backbones import create_backbone

    set_threads(args.threads)
    return create_backbone(args.backbone)


def run_prior(args: argparse.Namespace) -> int:
    from ..train.fusion_diff import PriorTrainConfig, pair_data, train_prior

    backbone = _setup(args)
    cfg = PriorTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, width=args.width,
                           depth=args.depth, prediction=args.prediction, cond_dropout=args.cond_dropout,
                           timesteps=args.timesteps, beta_schedule=args.beta_schedule, max_images=args.max_images,
                           seed=args.seed, save_every=args.save_every, precision=args.precision)
    data = pair_data(backbone, args.data, args.out / "cache", args.max_images, not args.quiet)
    ck = train_prior(backbone, data, cfg, args.out, resume=args.resume, progress=not args.quiet)
    st = ck.training["stage1"]
    print(json.dumps({"out": str(args.out), "method": f"fusion-diff:{args.out}", "seconds": st["seconds"],
                      "log": st["log"][-3:]}, indent=1))
    return 0


def run_adapter(args: argparse.Namespace) -> int:
    from ..errors import CirlabError
    from ..methods.fusion_diff import SamplingConfig, load_fusion_diff
    from ..train.fusion_diff import (
        AdapterTrainConfig,
        PriorTrainConfig,
        heldout_combos,
        pair_data,
        synthetic_triplets,
        train_adapter,
        train_prior,
        world_resolution,
    )

    backbone = _setup(args)
    if args.prior is None and args.data is None:
        raise CirlabError("train fusion-diff: give --prior (a stage-1 checkpoint) or --data (to train one first)")
    if args.prior is not None:
        prior_ck = load_fusion_diff(args.prior, backbone)
    else:
        pcfg = PriorTrainConfig(steps=args.prior_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                width=256, depth=4, save_every=args.save_every, precision=args.precision)
        data = pair_data(backbone, args.data, args.out / "cache", None, not args.quiet)
        prior_ck = train_prior(backbone, data, pcfg, args.out / "prior", resume=args.resume, progress=not args.quiet)
    cfg = AdapterTrainConfig(triplets=args.triplets, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             fusion_hidden=args.fusion_hidden, adapter_hidden=args.adapter_hidden,
                             adapter_layers=args.adapter_layers, align_weight=args.align_weight,
                             generator=args.generator, seed=args.seed, save_every=args.save_every,
                             precision=args.precision,
                             sampling=SamplingConfig(steps=args.sample_steps, samples=args.samples, mix=args.mix))
    banned = heldout_combos(args.data) if args.data else []
    res = world_resolution(args.data) if args.data else 64
    synth = synthetic_triplets(args.synthetic or args.out / "synthetic", cfg.triplets, cfg.generator, cfg.seed,
                               banned, res, not args.quiet)
    ck = train_adapter(backbone, prior_ck, synth, cfg, args.out, args.out / "cache", resume=args.resume,
                       progress=not args.quiet)
    st = ck.training["stage2"]
    print(json.dumps({"out": str(args.out), "method": f"fusion-diff:{args.out}", "seconds": st["seconds"],
                      "triplets": st["triplets"], "log": st["log"][-3:]}, indent=1))
    return 0
