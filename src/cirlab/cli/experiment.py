"""``cirlab experiment zeroshot``: train Pic2Word, SEARLE and LinCIR on the world, compare zero-shot.

Each method trains on the world's *train* gallery (images or captions; never its
triplets), then every method and the baselines are evaluated on the *test* split
with ``evaluate_methods``. Writes ``results.json`` + ``results.md`` to ``--out``
and, with ``--report PREFIX``, the same as ``PREFIX.json`` / ``PREFIX.md``.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from ..errors import CirlabError
from .common import write_text_atomic

BASELINES = ("image", "text", "sum")
TRAINED = ("pic2word", "searle", "lincir")
OVERALL = ("recall@1", "recall@5", "recall@10", "recall@50", "map@10")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.choices.get("experiment")  # another module may have created `cirlab experiment` already
    if p is None:
        p = sub.add_parser("experiment", help="reproducible experiments")
        esub = p.add_subparsers(dest="experiment", metavar="NAME")
        esub.required = True
    else:
        esub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    z = esub.add_parser("zeroshot", help="train pic2word/searle/lincir on world/train, evaluate on world/test")
    z.add_argument("--out", required=True, type=Path, help="checkpoints, index and results go here")
    z.add_argument("--world", type=Path, default=None, help="world root (train/ and test/); generated if missing "
                                                            "(default OUT/world)")
    z.add_argument("--small", type=int, default=None, help="generate a miniature world with N test queries")
    z.add_argument("--backbone", default="tiny:world")
    z.add_argument("--prompts", default="world", help="prompt preset or query template (recorded)")
    z.add_argument("--steps", type=int, default=500, help="training steps of each phi")
    z.add_argument("--batch-size", type=int, default=256)
    z.add_argument("--max-images", type=int, default=8192, help="train gallery entries used (images/captions)")
    z.add_argument("--oti-images", type=int, default=1024, help="SEARLE: images inverted for distillation")
    z.add_argument("--oti-steps", type=int, default=100, help="SEARLE: OTI steps when training")
    z.add_argument("--query-oti-steps", type=int, default=50, help="searle-oti at query time (0: skip it)")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--threads", type=int, default=None, help="torch CPU threads (small models: 1 is often fastest)")
    z.add_argument("--report", type=Path, default=None, help="also write PREFIX.json and PREFIX.md (e.g. docs/...)")
    z.set_defaults(func=run_zeroshot)


def command_line(args: argparse.Namespace) -> str:
    parts = ["cirlab", "experiment", "zeroshot", "--out", str(args.out)]
    for flag in ("world", "small", "backbone", "prompts", "steps", "batch_size", "max_images", "oti_images",
                 "oti_steps", "query_oti_steps", "seed", "threads", "report"):
        v = getattr(args, flag)
        if v is not None:
            parts += [f"--{flag.replace('_', '-')}", str(v)]
    return shlex.join(parts)


def run_zeroshot(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..data import load_dataset
    from ..eval.evaluate import evaluate_methods
    from ..methods.textual_inversion.oti import OTIConfig
    from ..train.textual_inversion import MethodTrainConfig, TrainingData, train_method
    from ..world import WorldConfig, generate_world

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    world = args.world or args.out / "world"
    if not (world / "train").is_dir() or not (world / "test").is_dir():
        cfg = WorldConfig(seed=args.seed).small(args.small) if args.small else WorldConfig(seed=args.seed)
        generate_world(world, cfg, ("train", "test"))
    if not (world / "test" / "triplets.jsonl").is_file():
        raise CirlabError(f"{world}/test: no triplets.jsonl; --world must be a world root with train/ and test/")
    backbone = create_backbone(args.backbone)
    data = TrainingData(world / "train", args.max_images)
    training: dict[str, Any] = {}
    specs = list(BASELINES)
    for name in TRAINED:
        cfg = MethodTrainConfig(method=name, steps=args.steps, batch_size=args.batch_size, prompts=args.prompts,
                                oti_images=args.oti_images, oti=OTIConfig(steps=args.oti_steps, seed=args.seed),
                                seed=args.seed)
        ck = train_method(backbone, data, cfg, args.out / name)
        training[name] = {k: v for k, v in ck.training.items() if k != "config"}
        specs.append(f"{name}:{args.out / name}")
    if args.query_oti_steps:
        specs.append(f"searle-oti:{args.query_oti_steps}")
    test = load_dataset(world / "test")
    results = evaluate_methods(test, backbone, specs, args.out / "index")
    payload = {"command": command_line(args), "backbone": backbone.spec, "world": str(world),
               "train_split": str(world / "train"), "test_split": str(world / "test"),
               "training": training, "results": [r.to_json() for r in results]}
    md = markdown(payload)
    write_text_atomic(args.out / "results.json", json.dumps(payload, indent=1))
    write_text_atomic(args.out / "results.md", md)
    if args.report:
        write_text_atomic(args.report.with_suffix(".json"), json.dumps(payload, indent=1))
        write_text_atomic(args.report.with_suffix(".md"), md)
    print(md)
    return 0


def _short(spec: str) -> str:
    name, _, arg = spec.partition(":")
    return spec if name in ("searle-oti", "weighted") else name


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(payload: dict[str, Any]) -> str:
    res = payload["results"]
    kinds = sorted({k for r in res for k in r["per_kind"]}, key=lambda k: (k == "heldout", k))
    out = [f"Backbone `{payload['backbone']}`, world test split `{payload['test_split']}` "
           f"({res[0]['config']['queries']} queries, gallery {res[0]['config']['gallery']}); reference removed "
           f"from rankings; metrics in percent.", "", f"Command: `{payload['command']}`", "",
           _row(["method", *OVERALL]), _row(["---"] * (len(OVERALL) + 1))]
    out += [_row([_short(r["method"]), *(f"{r['metrics'][c]:.2f}" for c in OVERALL)]) for r in res]
    for metric in ("recall@1", "recall@10"):
        out += ["", f"{metric} per edit kind:", "", _row(["method", *kinds]), _row(["---"] * (len(kinds) + 1))]
        out += [_row([_short(r["method"]), *(f"{r['per_kind'][k][metric]:.2f}" if k in r["per_kind"] else ""
                                              for k in kinds)]) for r in res]
    queries = res[0]["per_kind"]
    out += ["", "Queries per kind: " + ", ".join(f"{k} {queries[k].get('queries', '')}" for k in kinds), ""]
    return "\n".join(out)

