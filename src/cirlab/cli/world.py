"""``cirlab world generate``: write the built-in synthetic world."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CirlabError

if TYPE_CHECKING:
    from ..world import WorldConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help="the built-in synthetic CIR world")
    wsub = p.add_subparsers(dest="world_command", metavar="ACTION")
    wsub.required = True
    g = wsub.add_parser("generate", help="generate (or reuse) train/val/test splits in the cirlab dataset format")
    g.add_argument("--out", required=True, type=Path, help="output directory (one sub-directory per split)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resolution", type=int, default=64, help="image side in pixels")
    g.add_argument("--splits", default=None, help="comma-separated subset of train,val,test (default: all)")
    g.add_argument("--queries", type=int, default=None, help="test queries (train/val scale with it); default 2000")
    g.add_argument("--config", type=Path, default=None, help="a JSON WorldConfig (overrides the flags)")
    g.set_defaults(func=run_generate)


def world_config(args: argparse.Namespace) -> "WorldConfig":
    from ..world import WorldConfig

    if args.config:
        try:
            text = args.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CirlabError(f"--config {args.config}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise CirlabError(f"{args.config}:{e.lineno}: malformed JSON ({e.msg})") from None
        try:
            return WorldConfig.from_dict(raw)
        except CirlabError as e:
            raise CirlabError(f"{args.config}: {e}") from None
    if args.queries is not None and args.queries < 1:
        raise CirlabError(f"--queries must be at least 1, got {args.queries}")
    cfg = WorldConfig(seed=args.seed, resolution=args.resolution)
    if args.queries:
        cfg = cfg.small(args.queries) if args.queries < cfg.queries["test"] else cfg
    return cfg


def run_generate(args: argparse.Namespace) -> int:
    from ..world import SPLITS, generate_world

    splits = tuple(s.strip() for s in (args.splits or ",".join(SPLITS)).split(",") if s.strip())
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise CirlabError(f"--splits: unknown split(s) {bad}; choose from {list(SPLITS)}")
    done = generate_world(args.out, world_config(args), splits)
    for split, root in done.items():
        info = json.loads((root / "dataset.json").read_text())
        print(f"{split}: {info['images']} images, {info['queries']} queries -> {root}")
    return 0
