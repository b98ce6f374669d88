"""``cirlab experiment daig``: few-shot supervised CIR with synthetic pre-training (DAIG) in the world.

The pipeline lives in ``cirlab.experiments.daig``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CirlabError
from .common import experiment_subparsers


def register(sub: argparse._SubParsersAction) -> None:
    d = experiment_subparsers(sub).add_parser(
        "daig", help="32-shot Combiner vs + synthetic pre-training (unadapted / adapted generator), DRSP, FRA",
        description="Few-shot supervised CIR in the built-in world with synthetic pre-training (DAIG). Writes "
                    "OUT/results.json and OUT/results.md (mean ± std over seeds).")
    d.add_argument("--out", required=True, type=Path, help="world, synthetic data, features, runs and results")
    d.add_argument("--quick", action="store_true", help="miniature world (100 test queries), 2 seeds, 300 synthetic triplets (CI)")
    d.add_argument("--backbone", default="tiny:world", help="frozen backbone spec")
    d.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick 0,1)")
    d.add_argument("--shots", type=int, default=32, help="real triplets in the few-shot setting")
    d.add_argument("--synthetic", type=int, default=None, help="synthetic triplets per generator")
    d.add_argument("--world-queries", type=int, default=None, help="miniature world with N test queries")
    d.add_argument("--drsp", type=float, default=1.0, help="DRSP strength in pre-training")
    d.add_argument("--margin", type=float, default=0.1, help="FRA angular margin (radians) in fine-tuning")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    d.add_argument("--report", type=Path, default=None, help="also write PREFIX.json and PREFIX.md (e.g. docs/...)")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..experiments import write_results
    from ..experiments.daig import DaigConfig, command_line, markdown, run_daig
    from .common import set_threads

    set_threads(args.threads)
    cfg = DaigConfig.quick() if args.quick else DaigConfig()
    if args.seeds:
        try:
            cfg.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise CirlabError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if args.synthetic is not None:
        cfg.synthetic = args.synthetic
    if args.world_queries is not None:
        cfg.world_queries = args.world_queries
    if args.shots < 2:
        raise CirlabError(f"--shots {args.shots}: need at least 2 real triplets")
    cfg.shots, cfg.drsp, cfg.margin = args.shots, args.drsp, args.margin
    argv = sys.argv[sys.argv.index("daig") + 1:] if "daig" in sys.argv else ["--out", str(args.out)]
    res = run_daig(cfg, args.out, create_backbone(args.backbone), command_line(argv))
    md = markdown(res)
    write_results(res, md, args.out, args.report)
    print(md)
    return 0
