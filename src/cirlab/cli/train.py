"""``cirlab train ...``: training commands (backbone; methods register more)."""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

# modules under cirlab.cli that add `cirlab train <what>` commands, and the function that adds them
TRAIN_MODULES = [
    ("train_method", "register_method_training"),  # pic2word, searle, lincir
    ("train_supervised", "register_supervised_training"),  # combiner (DAIG stages)
    ("train_fusion_diff", "register_fusion_diff_training"),  # fusion-diff-prior, fusion-diff
    ("train_predicir", "register_predicir_training"),  # predicir
    ("train_cig", "register_cig_training"),  # cig (pixel-generator fine-tuning)
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a backbone or a method")
    tsub = p.add_subparsers(dest="train_command", metavar="WHAT")
    tsub.required = True
    b = tsub.add_parser("backbone", help="train the tiny backbone contrastively on image-caption pairs")
    b.add_argument("--data", required=True, type=Path, help="dataset directory with captioned gallery.jsonl")
    b.add_argument("--out", required=True, type=Path, help="output directory (config.json + model.safetensors)")
    b.add_argument("--eval-data", type=Path, default=None, help="dataset for image-text retrieval numbers")
    b.add_argument("--epochs", type=int, default=10)
    b.add_argument("--max-steps", type=int, default=None, help="stop after N steps (default: --epochs full epochs; "
                   "the run prints its step count and measured time per step first)")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--width", type=int, default=128)
    b.add_argument("--depth", type=int, default=4)
    b.add_argument("--text-depth", type=int, default=3)
    b.add_argument("--embed-dim", type=int, default=128)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--captions", choices=("world", "alttext"), default="world",
                   help="world: the gallery's full captions; alttext: web-like partial alt-text from each scene")
    b.add_argument("--alt-per-image", type=int, default=8, help="alttext captions per image")
    b.add_argument("--text-encoder", choices=("mean", "clip"), default="mean",
                   help="mean: mean-pooled tokens; clip: causal attention, end-of-text pooling")
    b.add_argument("--warmup-steps", type=int, default=100)
    b.add_argument("--init-vision", default=None, help="tiny backbone spec whose image tower starts this one "
                                                       "(e.g. tiny:world)")
    b.add_argument("--image-cache", default=None, help="with --lock-image: a safetensors file that keeps the locked "
                                                       "image features between runs")
    b.add_argument("--lock-image", action="store_true", help="keep that image tower frozen, train the text tower "
                                                             "only (LiT)")
    b.set_defaults(func=run_backbone)
    for module, function in TRAIN_MODULES:
        getattr(importlib.import_module(f"{__package__}.{module}"), function)(tsub)

def run_backbone(args: argparse.Namespace) -> int:
    from ..train.backbone import BackboneTrainConfig, train_backbone

    cfg = BackboneTrainConfig(data=str(args.data), out=str(args.out),
                              eval_data=str(args.eval_data) if args.eval_data else None, epochs=args.epochs,
                              max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, width=args.width,
                              depth=args.depth, text_depth=args.text_depth, embed_dim=args.embed_dim, seed=args.seed,
                              threads=args.threads, captions=args.captions, alt_per_image=args.alt_per_image,
                              text_encoder=args.text_encoder, warmup_steps=args.warmup_steps,
                              init_vision=args.init_vision, lock_image=args.lock_image,
                              image_cache=args.image_cache)
    summary = train_backbone(cfg)
    print(json.dumps({"out": str(args.out), "steps": summary["steps"], "seconds": summary["seconds"],
                      "eval": summary.get("eval")}, indent=1))
    return 0
