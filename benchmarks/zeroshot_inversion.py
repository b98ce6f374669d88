"""How much of the reference image a pseudo word carries: rank a gallery with the image prompt alone.

For each trained textual-inversion checkpoint under ``--runs`` (the ``--out`` of
``cirlab experiment zeroshot``), the query is the image prompt ("a picture of $")
with ``$`` = phi(reference feature), no modification text; prints Recall@1/10 of
finding the reference itself (not excluded) among the test gallery.

    .venv/bin/python benchmarks/zeroshot_inversion.py --runs RUNS --world WORLD [--backbone tiny:world]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cirlab.backbones import create_backbone
from cirlab.data import load_dataset
from cirlab.index import build_index
from cirlab.methods import QueryBatch, create_method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", required=True, type=Path)
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--backbone", default="tiny:world")
    ap.add_argument("--references", type=int, default=1000)
    args = ap.parse_args()
    bb = create_backbone(args.backbone)
    ds = load_dataset(args.world / "test")
    index = build_index(bb, ds.gallery, args.runs / "index", progress=False)
    refs = sorted({t.reference for t in ds.triplets})[: args.references]
    feats = index.vectors(refs)
    out = {}
    for name in ("pic2word", "searle", "lincir"):
        method = create_method(f"{name}:{args.runs / name}", bb)
        prompt = method.prompts.image
        with torch.no_grad():
            q = torch.cat([method.compose(QueryBatch([prompt] * len(f), f)) for f in feats.split(250)])
        _, ids = index.search(q, 10)
        out[name] = {"prompt": prompt,
                     "recall@1": round(100 * sum(r[0] == x for r, x in zip(ids, refs)) / len(refs), 2),
                     "recall@10": round(100 * sum(x in r for r, x in zip(ids, refs)) / len(refs), 2)}
    print(json.dumps({"backbone": bb.spec, "references": len(refs), "results": out}, indent=1))


if __name__ == "__main__":
    import _machine

    sys.exit(_machine.run(main))
