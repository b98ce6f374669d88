"""``cirlab train cig``: fine-tune a diffusers pipeline as CIG's pseudo-target generator."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from .common import set_threads


def register_cig_training(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser("cig", help="CIG: fine-tune a diffusers text-to-image pipeline on image-caption "
                                    "reconstruction with composed prompts")
    p.add_argument("--pipeline", required=True, type=Path, help="diffusers pipeline directory (save_pretrained)")
    p.add_argument("--data", required=True, type=Path, help="dataset directory / gallery with captions")
    p.add_argument("--out", required=True, type=Path, help="output pipeline directory (use as diffusers:OUT)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-images", type=int, default=2048)
    p.add_argument("--size", type=int, default=0, help="training resolution (0: the pipeline's native size)")
    p.add_argument("--plain-captions", action="store_true", help="prompts are the captions (no composed prompts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run_cig_training)


def run_cig_training(args: argparse.Namespace) -> int:
    from ..train.cig import CIGGeneratorConfig, train_cig_generator

    set_threads(args.threads)
    cfg = CIGGeneratorConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_images=args.max_images,
                             size=args.size, composed=not args.plain_captions, seed=args.seed)
    summary = train_cig_generator(args.pipeline, args.data, args.out, cfg)
    print(json.dumps({"out": str(args.out), "images": summary["images"], "seconds": summary["seconds"],
                      "last": summary["log"][-1] if summary["log"] else None}, indent=1))
    return 0
