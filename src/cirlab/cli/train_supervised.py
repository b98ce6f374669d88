"""``cirlab train combiner``: supervised Combiner training (optional synthetic pre-training, DRSP, FRA)."""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from ..errors import CirlabError
from .common import open_dataset, set_threads


def register_supervised_training(tsub: argparse._SubParsersAction) -> None:
    c = tsub.add_parser("combiner", help="train a Combiner on triplets (two stages: synthetic, then real)",
                        description="Encode the triplets' images and texts once with the frozen backbone, then "
                                    "train the Combiner on the cached features: optionally pre-train on --synthetic "
                                    "triplets (with --drsp), then fine-tune on --real triplets (with --fra-margin). "
                                    "Each stage resumes from OUT/stages/<stage>/; metrics per epoch go to "
                                    "OUT/metrics.jsonl. Use the result as --methods combiner:OUT.")
    c.add_argument("--real", required=True, type=Path, help="dataset directory with the real triplets")
    c.add_argument("--out", required=True, type=Path, help="checkpoint directory")
    c.add_argument("--synthetic", type=Path, default=None, help="dataset directory with synthetic triplets")
    c.add_argument("--val", type=Path, default=None, help="dataset for per-epoch validation recall")
    c.add_argument("--backbone", default="tiny:world", help="frozen backbone spec")
    c.add_argument("--shots", type=int, default=None, help="use N real triplets drawn with --seed")
    c.add_argument("--pretrain-epochs", type=int, default=10)
    c.add_argument("--finetune-epochs", type=int, default=30)
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--lr", type=float, default=1e-3, help="pre-training learning rate")
    c.add_argument("--finetune-lr", type=float, default=5e-4)
    c.add_argument("--drsp", type=float, default=0.0, help="DRSP strength in pre-training (0: off)")
    c.add_argument("--fra-margin", type=float, default=0.0, help="FRA angular margin in radians in fine-tuning")
    c.add_argument("--projection", type=int, default=512)
    c.add_argument("--hidden", type=int, default=1024)
    c.add_argument("--dropout", type=float, default=0.2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    c.set_defaults(func=run_supervised)


def run_supervised(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..methods.combiner import CombinerConfig
    from ..train.features import eval_features, triplet_features
    from ..train.supervised import StageConfig, SupervisedConfig, train_supervised

    set_threads(args.threads)
    backbone = create_backbone(args.backbone)
    cache = args.out / "features"
    real_ds = open_dataset(args.real)
    trips = [t for t in real_ds.triplets if t.targets]
    if args.shots:
        if args.shots > len(trips):
            raise CirlabError(f"--shots {args.shots}: {args.real} has only {len(trips)} triplets with a target")
        trips = random.Random(args.seed).sample(trips, args.shots)
    real = triplet_features(backbone, real_ds, cache, trips)
    syn = triplet_features(backbone, open_dataset(args.synthetic), cache) if args.synthetic else None
    val = eval_features(backbone, open_dataset(args.val), cache) if args.val else None
    bs = min(args.batch_size, len(real))
    cfg = SupervisedConfig(
        CombinerConfig(dim=backbone.embed_dim, projection=args.projection, hidden=args.hidden, dropout=args.dropout),
        pretrain=StageConfig(epochs=args.pretrain_epochs if syn is not None else 0, batch_size=args.batch_size,
                             lr=args.lr, drsp=args.drsp),
        finetune=StageConfig(epochs=args.finetune_epochs, batch_size=max(2, bs), lr=args.finetune_lr,
                             margin=args.fra_margin),
        seed=args.seed, backbone=backbone.spec, fingerprint=backbone.fingerprint())
    ck = train_supervised(cfg, real, args.out, syn, val)
    print(json.dumps({"out": str(args.out), "method": f"combiner:{args.out}", "seconds": ck.training["seconds"],
                      "stages": ck.training["stages"]}, indent=1))
    return 0
