"""``cirlab demo``: the whole pipeline on the built-in world with the shipped backbone.

Generates (or reuses) the world's test split, indexes its gallery with
``tiny:alt-600`` (the shipped backbone with the strongest language prior: a CLIP-style text tower
trained on alt-text for 600 steps), evaluates every baseline, prints a table, and writes
``results.json`` and ``report.html`` under ``--out``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_feature_cache_arg, feature_cache, format_table, split_methods
from .evaluate import TABLE_COLUMNS

# the baselines, and the sum with the text weight that the calibration chooses on the world's val split
# (0.7 on world seeds 0 and 1 with tiny:alt-600; docs/world.md#calibration)
DEMO_METHODS = ["image", "text", "sum", "weighted:0.7"]
DEMO_BACKBONE = "tiny:alt-600"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate the world, evaluate every baseline, write results.json + report.html")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory")
    p.add_argument("--world", type=Path, default=None, help="world directory (default: OUT/world)")
    p.add_argument("--backbone", default=DEMO_BACKBONE, help="backbone spec")
    p.add_argument("--methods", default=",".join(DEMO_METHODS), help="comma-separated method specs")
    p.add_argument("--queries", type=int, default=None, help="smaller world for a quick run (default: full test)")
    p.add_argument("--seed", type=int, default=0, help="world seed")
    add_feature_cache_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..data import load_dataset
    from ..eval.evaluate import evaluate_methods
    from ..eval.report import write_report
    from ..eval.results import write_results
    from ..world import WorldConfig, generate_world

    t0 = time.time()
    out: Path = args.out
    cfg = WorldConfig(seed=args.seed)
    if args.queries:
        cfg = cfg.small(args.queries)
    world = args.world or out / "world"
    split = generate_world(world, cfg, splits=("test",))["test"]
    dataset = load_dataset(split)
    backbone = create_backbone(args.backbone)
    methods = split_methods(args.methods)
    results = evaluate_methods(dataset, backbone, methods, out / "index", cache=feature_cache(args))
    print(f"\nworld test split: {len(dataset.gallery)} gallery images, {len(dataset)} queries; "
          f"backbone {args.backbone}; reference removed from rankings; metrics in %\n")
    print(format_table([{"method": r.method, **r.metrics} for r in results], TABLE_COLUMNS))
    write_results(out / "results.json", results, dataset=str(split), world=cfg.to_dict(), index_dir=str(out / "index"))
    report = write_report(out / "report.html", dataset, results, title="cirlab demo: baselines on the built-in world")
    print(f"\nwrote {out / 'results.json'} and {report} in {time.time() - t0:.0f}s")
    return 0
