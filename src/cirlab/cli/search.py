"""``cirlab search``: one composed query against a saved index."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index with a reference image (file or gallery id) and a text")
    p.add_argument("--index", required=True, type=Path, help="index directory made by `cirlab index`")
    p.add_argument("--reference", required=True, help="reference image file, or the id of a gallery image")
    p.add_argument("--text", required=True, help="modification text")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--method", default="sum", help="method spec (see `cirlab methods`)")
    p.add_argument("--keep-reference", action="store_true", help="do not drop the reference from the results")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CirlabError
    from ..retrieval import Retriever

    if not args.text.strip():
        raise CirlabError("--text is empty")
    if args.k < 1:
        raise CirlabError(f"-k must be at least 1, got {args.k}")
    retriever = Retriever.from_index(args.index, method=args.method)
    hits = retriever.search(args.reference, args.text, k=args.k, exclude_reference=not args.keep_reference)
    if args.json:
        print(json.dumps({"reference": args.reference, "text": args.text, "method": args.method,
                          "results": [{"rank": n + 1, "id": h.id, "score": round(h.score, 6), "path": h.path}
                                      for n, h in enumerate(hits)]}, indent=1))
    else:
        for n, h in enumerate(hits, 1):
            print(f"{n:3d}  {h.score:.4f}  {h.id}  {h.path or ''}")
    return 0
