"""``cirlab train predicir``: train PrediCIR's world model and alignment on a captioned gallery."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from .common import set_threads


def register_predicir_training(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser("predicir", help="train PrediCIR (world-view prediction + pseudo word) on image-caption pairs",
                        description="Zero-shot: trains on a gallery's images and captions (random crops as source "
                                    "views, captions as actions, full images as targets) with the backbone frozen; "
                                    "never reads triplets. Load the result with --methods predicir:OUT.")
    p.add_argument("--data", required=True, type=Path, help="dataset directory or gallery with captions")
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--backbone", default="tiny:world", help="frozen backbone spec")
    p.add_argument("--prompts", default="world", help="prompt preset (photo, world, fashion) or query template")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--width", type=int, default=128, help="predictor width")
    p.add_argument("--depth", type=int, default=2, help="predictor transformer layers")
    p.add_argument("--max-images", type=int, default=8192, help="random subset of the gallery (0: all)")
    p.add_argument("--lambda-align", type=float, default=1.0, help="weight of the cross-modal alignment loss")
    p.add_argument("--visible-weight", type=float, default=0.25, help="prediction loss weight of visible patches")
    p.add_argument("--action-dropout", type=float, default=0.3,
                   help="probability that the action is the empty text (the pseudo word must come from the image)")
    p.add_argument("--caption-in-prompt", type=float, default=0.0,
                   help="probability that the training prompt carries the caption ('... $ that {caption}')")
    p.add_argument("--min-side", type=float, default=0.35, help="smallest crop side (fraction of the image side)")
    p.add_argument("--max-side", type=float, default=0.8, help="largest crop side")
    p.add_argument("--full-view-prob", type=float, default=0.15, help="probability that the source is the whole image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run_predicir_training)


def run_predicir_training(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..methods.predicir.views import ViewConfig
    from ..train.predicir import PrediCIRTrainConfig, train_predicir

    set_threads(args.threads)
    cfg = PrediCIRTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, width=args.width,
                              depth=args.depth, prompts=args.prompts, lambda_align=args.lambda_align,
                              visible_weight=args.visible_weight, caption_in_prompt=args.caption_in_prompt,
                              action_dropout=args.action_dropout,
                              views=ViewConfig(args.min_side, args.max_side, args.full_view_prob),
                              max_images=args.max_images, seed=args.seed)
    backbone = create_backbone(args.backbone)
    ck = train_predicir(backbone, args.data, cfg, args.out)
    print(json.dumps({"out": str(args.out), "method": f"predicir:{args.out}", "seconds": ck.training["seconds"],
                      "log": ck.training["log"][-3:]}, indent=1))
    return 0
