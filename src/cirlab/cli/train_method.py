"""``cirlab train method pic2word|searle|lincir``: train a textual-inversion mapping network."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CirlabError
from .common import set_threads


def register_method_training(tsub: argparse._SubParsersAction) -> None:
    m = tsub.add_parser("method", help="train a zero-shot method's mapping network (pic2word, searle, lincir)",
                        description="Train on a dataset's gallery images (pic2word, searle) or captions (lincir) "
                                    "with the backbone frozen; never reads triplets. Load the result with "
                                    "--methods NAME:OUT.")
    m.add_argument("name", help="which method: pic2word, searle or lincir")
    m.add_argument("--data", required=True, type=Path, help="dataset directory or gallery (images / captions)")
    m.add_argument("--out", required=True, type=Path, help="checkpoint directory (config.json + model.safetensors)")
    m.add_argument("--backbone", default="tiny:world", help="frozen backbone spec")
    m.add_argument("--prompts", default="photo",
                   help="prompt templates: a preset (photo, world, fashion) or a query template like "
                        "'a photo of $ that {text}'; recorded in the checkpoint")
    m.add_argument("--recipe", choices=("cirlab", "paper"), default="cirlab",
                   help="cirlab: phi on normalised features with cirlab's losses; paper: the authors' losses, phi "
                        "shapes and optimiser settings on raw features, the method's official prompts and "
                        "inference preset (options given here still override)")
    m.add_argument("--steps", type=int, default=None, help="training steps (default 500)")
    m.add_argument("--batch-size", type=int, default=None, help="default 256 (paper: Pic2Word 128, LinCIR 512)")
    m.add_argument("--lr", type=float, default=None, help="default 5e-4 (paper: 1e-4)")
    m.add_argument("--hidden", type=int, default=None, help="phi's hidden width (default 512; paper: SEARLE/LinCIR 4d)")
    m.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (paper: Pic2Word 10000)")
    m.add_argument("--max-images", type=int, default=None, help="use only the first N gallery entries")
    m.add_argument("--temperature", type=float, default=None,
                   help="InfoNCE temperature (default 0.05; paper: SEARLE 0.25, Pic2Word the CLIP logit scale)")
    m.add_argument("--noise", type=float, default=None, help="lincir: noise scale on the text feature (default 1)")
    m.add_argument("--oti-images", type=int, default=None, help="searle: images inverted by OTI (default 1024)")
    m.add_argument("--oti-steps", type=int, default=None, help="searle: OTI steps per image batch (default 150; "
                                                                 "paper 350)")
    m.add_argument("--concepts", type=Path, default=None,
                   help="searle/lincir: concept word list (one per line) instead of the tokenizer's nouns/attributes")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads (small models: 1 is often fastest)")
    m.set_defaults(func=run_method_training)


def run_method_training(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..methods.textual_inversion.oti import OTIConfig
    from ..train.textual_inversion import TRAINERS, MethodTrainConfig, TrainingData, paper_config, train_method

    if args.name not in TRAINERS:  # before the backbone loads
        raise CirlabError(f"cirlab train method {args.name!r}: unknown method; known: {', '.join(sorted(TRAINERS))}")
    given = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                               "hidden": args.hidden, "warmup": args.warmup, "temperature": args.temperature,
                               "noise": args.noise, "oti_images": args.oti_images}.items() if v is not None}
    common = {"concepts": str(args.concepts) if args.concepts else None, "seed": args.seed}
    set_threads(args.threads)
    backbone = create_backbone(args.backbone)
    if args.recipe == "paper":
        oti = {"seed": args.seed, **({"steps": args.oti_steps} if args.oti_steps is not None else {})}
        cfg = paper_config(args.name, backbone.embed_dim, **given, **common, oti=oti)
    else:
        cfg = MethodTrainConfig(method=args.name, prompts=args.prompts, **given, **common,
                                oti=OTIConfig(steps=args.oti_steps or 150, seed=args.seed))
    data = TrainingData(args.data, args.max_images)
    ck = train_method(backbone, data, cfg, args.out)
    print(json.dumps({"out": str(args.out), "method": f"{args.name}:{args.out}", "seconds": ck.training["seconds"],
                      "log": ck.training["log"][-3:]}, indent=1))
    return 0
