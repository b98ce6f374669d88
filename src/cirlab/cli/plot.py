"""``cirlab plot fusion-diff``: the 2-D view of fused representations vs image and text embeddings."""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from .common import split_methods


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="figures (PNG) of a method's representations")
    psub = p.add_subparsers(dest="plot_command", metavar="WHAT")
    psub.required = True
    f = psub.add_parser("fusion-diff", help="PCA of fused features vs image, text, generated and target embeddings",
                        description="Project the fused (reference, text) features of a Fusion-Diff checkpoint, the "
                                    "reference image and modification-text embeddings, the generated target "
                                    "embeddings and the true targets of QUERIES queries with one PCA; write a PNG. "
                                    "With --report, also evaluate --methods on DATA and write the HTML report with "
                                    "the figure in it.")
    f.add_argument("--checkpoint", required=True, help="Fusion-Diff checkpoint dir (or fusion-diff:DIR[,opts])")
    f.add_argument("--data", required=True, type=Path, help="dataset directory (triplets + gallery)")
    f.add_argument("--out", required=True, type=Path, help="PNG to write")
    f.add_argument("--backbone", default="tiny:world")
    f.add_argument("--queries", type=int, default=200, help="queries drawn at random")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--report", type=Path, default=None, help="also write an HTML report with the figure")
    f.add_argument("--methods", default="image,text,sum",
                   help="methods evaluated for --report (the checkpoint's method is added)")
    f.add_argument("--index", type=Path, default=None, help="index directory for --report (default OUT.index)")
    f.set_defaults(func=run_fusion_diff)


def run_fusion_diff(args: argparse.Namespace) -> int:
    import torch

    from ..backbones import create_backbone
    from ..data import load_dataset
    from ..errors import CirlabError
    from ..methods.fusion_diff.method import load_spec
    from ..methods.fusion_diff.plot import plot_embeddings

    backbone = create_backbone(args.backbone)
    arg = args.checkpoint.split(":", 1)[1] if args.checkpoint.startswith("fusion-diff:") else args.checkpoint
    ck, sampling, path = load_spec(arg, backbone)
    if ck.pipeline.fusion is None:
        raise CirlabError(f"{path}: a stage-1 (prior-only) checkpoint has no fused feature to plot")
    ds = load_dataset(args.data)
    trips = [t for t in ds.triplets if t.targets]
    if not trips:
        raise CirlabError(f"{args.data}: no triplets with a target")
    trips = random.Random(args.seed).sample(trips, min(args.queries, len(trips)))
    image = backbone.encode_images([ds.gallery.path(t.reference) for t in trips])
    target = backbone.encode_images([ds.gallery.path(t.targets[0]) for t in trips])
    text = backbone.encode_texts([t.caption for t in trips])
    with torch.no_grad():
        generated, fused = ck.pipeline.generate(image, text, sampling)
    title = f"Fusion-Diff joint space ({len(trips)} queries of {ds.name})"
    png = plot_embeddings(args.out, {"image": image, "text": text, "fused": fused, "generated": generated,
                                     "target": target}, title)
    cos = lambda a, b: round(float((a * b).sum(-1).mean()), 4)
    summary = {"png": str(png), "queries": len(trips), "mean cosine to target": {
        "image": cos(image, target), "text": cos(text, target), "fused": cos(fused, target),
        "generated": cos(generated, target)}}
    if args.report:
        from ..eval.evaluate import evaluate_methods
        from ..eval.report import write_report

        specs = split_methods(args.methods) + [f"fusion-diff:{arg}"]
        results = evaluate_methods(ds, backbone, specs, args.index or args.out.with_suffix(".index"))
        write_report(args.report, ds, results, title=f"Fusion-Diff on {ds.name}",
                     figures=[(title + ": one PCA over all points; grey lines join a fused feature to its target",
                               png)])
        summary["report"] = str(args.report)
        summary["metrics"] = {r.method: r.metrics for r in results}
    print(json.dumps(summary, indent=1))
    return 0
