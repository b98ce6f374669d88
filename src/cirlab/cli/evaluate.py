"""``cirlab eval``: evaluate methods on a dataset in the cirlab format (or a standard benchmark)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CirlabError
from .common import (add_feature_cache_arg, default_index_dir, feature_cache, format_table, open_dataset,
                     split_methods, write_json)

TABLE_COLUMNS = ["method", "recall@1", "recall@5", "recall@10", "recall@50", "map@10"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate methods on a dataset (Recall@K, mAP@K, per edit kind)")
    p.add_argument("--data", type=Path, default=None, help="dataset directory in the cirlab format")
    p.add_argument("--benchmark", default=None, help="a standard benchmark instead of --data: cirr, fashioniq, circo")
    p.add_argument("--split", default="val", help="benchmark split (with --benchmark)")
    p.add_argument("--data-root", type=Path, default=None, help="benchmark root (or $CIRLAB_<BENCHMARK>_ROOT)")
    p.add_argument("--backbone", default="tiny:world", help="backbone spec")
    p.add_argument("--methods", default="image,text,sum", help="comma-separated method specs")
    p.add_argument("--index-dir", type=Path, default=None, help="where the gallery index is cached")
    p.add_argument("--keep-reference", action="store_true",
                   help="keep the reference image in the ranking (default: removed, CIRR convention)")
    p.add_argument("--out", type=Path, default=None, help="write results JSON here")
    p.add_argument("--save-rankings", type=Path, default=None, help="write {query id: top-50 ids} JSON here "
                   "(with --benchmark: a directory for server-format prediction files)")
    p.add_argument("--json", action="store_true", help="print the results JSON instead of a table")
    p.add_argument("--template", default=None,
                   help="benchmark prompt template with {caption}, or a preset (plain, photo-that); recorded in results")
    p.add_argument("--caption-join", default=None,
                   help="Fashion IQ caption join: and, and-reversed, both (orders averaged), clip4cir (CLIP4Cir's) or a "
                        "format with {c1} {c2}")
    p.add_argument("--drop-incomplete", action="store_true",
                   help="benchmark: evaluate only queries whose images are all present (noted loudly in results)")
    add_feature_cache_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.benchmark:
        from ..benchmarks import run_eval  # the standard-benchmark path

        return run_eval(args)
    if args.data is None:
        raise CirlabError("give --data DIR (a cirlab-format dataset) or --benchmark NAME")
    from ..backbones import create_backbone
    from ..eval.evaluate import evaluate_methods

    dataset = open_dataset(args.data)
    backbone = create_backbone(args.backbone)
    methods = split_methods(args.methods)
    index_dir = args.index_dir or default_index_dir(dataset.gallery, backbone.spec)
    results = evaluate_methods(dataset, backbone, methods, index_dir, exclude_reference=not args.keep_reference,
                               cache=feature_cache(args))
    payload = {"dataset": str(args.data), "results": [r.to_json() for r in results]}
    if args.out:
        from ..eval.results import write_results

        write_results(args.out, results, dataset=str(args.data), index_dir=str(index_dir))
    if args.save_rankings:
        write_json(args.save_rankings, {r.method: r.rankings for r in results})
    if args.json:
        print(json.dumps(payload, indent=1))
    else:
        print(format_table([{"method": r.method, **r.metrics} for r in results], TABLE_COLUMNS))
    return 0
