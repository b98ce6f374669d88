"""``cirlab experiment generative``: the world comparison of every registered zero-shot method.

The experiment (what it trains, groups and writes) is described in ``cirlab.experiments.generative``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..errors import CirlabError
from ..experiments import generative
from ..experiments.generative import QUICK_QUERIES, SPEC_FILE, UNTRAINED
from .common import experiment_subparsers, set_threads, split_methods


def register(sub: argparse._SubParsersAction) -> None:
    g = experiment_subparsers(sub).add_parser("generative", help="train every registered zero-shot method on world/train, compare on "
                                           "world/test per edit-kind group, mean over seeds",
                        description=generative.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--out", required=True, type=Path, help="checkpoints, rankings and results go here")
    g.add_argument("--world", type=Path, default=None, help="world root (train/ and test/); generated into OUT/world "
                                                            "when missing")
    g.add_argument("--small", type=int, default=None, help="generate a miniature world with N test queries")
    g.add_argument("--world-seed", type=int, default=0, help="seed of a generated world")
    g.add_argument("--quick", action="store_true", help=f"smoke run: small trainer budgets, a {QUICK_QUERIES}-query "
                                                        "world unless --world/--small, searle-oti:5")
    g.add_argument("--backbone", default="tiny:world")
    g.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (e.g. 0 1 2)")
    g.add_argument("--trainers", default=None, help="comma-separated zero-shot trainers (default: all registered)")
    g.add_argument("--untrained", default=None, help=f"comma-separated untrained method specs "
                                                     f"(default: {','.join(UNTRAINED)}; '' for none)")
    g.add_argument("--options", default=None, help="JSON object of per-trainer options, e.g. "
                                                   "'{\"predicir\": {\"steps\": 500}}' (ctx.options)")
    g.add_argument("--fail-fast", action="store_true", help="stop at the first failing trainer")
    g.add_argument("--resume", action="store_true", help="reuse a trainer's result from an earlier run into the same "
                                                         f"--out (its OUT/seed-S/NAME/{SPEC_FILE}) when the budget "
                                                         "(--quick, its options), the backbone and the train split "
                                                         "(gallery and images) are the same")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--report", type=Path, default=None, help="also write PREFIX.json and PREFIX.md (e.g. docs/...)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.set_defaults(func=run_generative)


def command_line(args: argparse.Namespace) -> str:
    parts = ["cirlab", "experiment", "generative", "--out", str(args.out)]
    for flag in ("world", "small", "world_seed", "backbone", "trainers", "untrained", "options", "threads", "report"):
        v = getattr(args, flag)
        if v is not None:
            parts += [f"--{flag.replace('_', '-')}", str(v)]
    parts += ["--seeds", *map(str, args.seeds)]
    parts += [f for f, on in (("--quick", args.quick), ("--fail-fast", args.fail_fast), ("--resume", args.resume))
              if on]
    return shlex.join(parts)


def run_generative(args: argparse.Namespace) -> int:
    from ..experiments.generative import GenerativeConfig, markdown, run_generative as run

    set_threads(args.threads)
    options = json.loads(args.options) if args.options else {}
    if not isinstance(options, dict):
        raise CirlabError(f"--options {args.options!r}: must be a JSON object")
    cfg = GenerativeConfig(
        out=args.out, world=args.world, small=args.small, world_seed=args.world_seed, quick=args.quick,
        backbone=args.backbone, seeds=list(args.seeds),
        trainers=None if args.trainers is None else [n.strip() for n in args.trainers.split(",") if n.strip()],
        untrained=None if args.untrained is None else split_methods(args.untrained), options=options,
        fail_fast=args.fail_fast, resume=args.resume, progress=not args.no_progress, report=args.report)
    payload = run(cfg, command_line(args))
    print(markdown(payload))
    if payload["failures"]:
        print(f"cirlab experiment generative: {len(payload['failures'])} failure(s); see 'failures' in "
              f"{args.out / 'results.json'}", file=sys.stderr)
        return 1
    return 0
