"""``cirlab index``: encode a gallery once and save a searchable index."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import open_gallery


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="encode a gallery (dataset dir, gallery.jsonl or image folder) into an index")
    p.add_argument("gallery", type=Path, help="dataset directory, gallery.jsonl, or a folder of images")
    p.add_argument("--out", required=True, type=Path, help="index directory (reused when up to date)")
    p.add_argument("--backbone", default="tiny:world", help="backbone spec (default: tiny:world)")
    p.add_argument("--index-spec", "--index-type", default="exact",
                   help="index type, e.g. exact, exact:fp16, 'faiss:IVF1024,Flat?nprobe=16', faiss:HNSW32, "
                        "milvus:gallery.db, milvus:http://host:19530 (see docs/index.md)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="encode with a Ray actor pool: a local loopback-only Ray, or the cluster at ADDRESS "
                        "(e.g. auto, ray://head:10001)")
    p.add_argument("--ray-actors", type=int, default=None, help="actors in the Ray pool (default: one per CPU/GPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=2048, help="images per resumable chunk")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..index import build_index

    gallery = open_gallery(args.gallery)
    backbone = create_backbone(args.backbone)
    try:
        index = build_index(backbone, gallery, args.out, args.index_spec, chunk_size=args.chunk_size,
                            batch_size=args.batch_size, extra={"gallery": str(args.gallery)}, ray=args.ray,
                            ray_options={"num_actors": args.ray_actors} if args.ray_actors else None)
    except (KeyError, ValueError) as e:  # a bad --index-spec (unknown kind, factory, option)
        from ..errors import CirlabError

        raise CirlabError(f"--index-spec {args.index_spec!r}: {e.args[0] if e.args else e}") from None
    print(f"indexed {len(index)} images with {args.backbone} ({index.spec}) -> {args.out}")
    return 0
