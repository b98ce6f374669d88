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
    m.add_argument("--steps", type=int, default=500)
    m.add_argument("--batch-size", type=int, default=256)
    m.add_argument("--lr", type=float, default=5e-4)
    m.add_argument("--hidden", type=int, default=512, help="phi's hidden width")
    m.add_argument("--max-images", type=int, default=None, help="use only the first N gallery entries")
    m.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature (pic2word, searle)")
    m.add_argument("--noise", type=float, default=1.0, help="lincir: noise scale on the text feature")
    m.add_argument("--oti-images", type=int, default=1024, help="searle: images inverted by OTI")
    m.add_argument("--oti-steps", type=int, default=150, help="searle: OTI steps per image batch")
    m.add_argument("--concepts", type=Path, default=None,
                   help="searle/lincir: concept word list (one per line) instead of the tokenizer's nouns/attributes")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads (small models: 1 is often fastest)")
    m.set_defaults(func=run_method_training)


def run_method_training(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..methods.textual_inversion.oti import OTIConfig
    from ..train.textual_inversion import TRAINERS, MethodTrainConfig, TrainingData, train_method

    if args.name not in TRAINERS:  # before the backbone loads
        raise CirlabError(f"cirlab train method {args.name!r}: unknown method; known: {', '.join(sorted(TRAINERS))}")

    cfg = MethodTrainConfig(method=args.name, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            hidden=args.hidden, prompts=args.prompts, temperature=args.temperature, noise=args.noise,
                            oti_images=args.oti_images, oti=OTIConfig(steps=args.oti_steps, seed=args.seed),
                            concepts=str(args.concepts) if args.concepts else None, seed=args.seed)
    set_threads(args.threads)
    backbone = create_backbone(args.backbone)
    data = TrainingData(args.data, args.max_images)
    ck = train_method(backbone, data, cfg, args.out)
    print(json.dumps({"out": str(args.out), "method": f"{args.name}:{args.out}", "seconds": ck.training["seconds"],
                      "log": ck.training["log"][-3:]}, indent=1))
    return 0
