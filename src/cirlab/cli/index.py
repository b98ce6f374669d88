"""``cirlab index``: encode a gallery once and save a searchable index; verify or repair a saved one."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CirlabError
from .common import add_feature_cache_arg, feature_cache, open_gallery


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="encode a gallery (dataset dir, gallery.jsonl or image folder) into an index",
                       description="Encode a gallery into an index directory. The directory must be new, empty, or "
                                   "an index made by cirlab; one build runs in it at a time. A saved index that "
                                   "fits is reused after its checksums are verified.")
    p.add_argument("gallery", type=Path, nargs="?", default=None,
                   help="dataset directory, gallery.jsonl, or a folder of images (with --verify / --repair: "
                        "default, the gallery the index was built from)")
    p.add_argument("--out", required=True, type=Path, help="index directory (reused when up to date)")
    p.add_argument("--backbone", default=None, help="backbone spec (default: tiny:world, or with --repair the "
                                                    "index's own)")
    p.add_argument("--index-spec", "--index-type", default=None,
                   help="index type, e.g. exact, exact:fp16, 'faiss:IVF1024,Flat?nprobe=16', faiss:HNSW32, "
                        "milvus:gallery.db, milvus:http://host:19530 (see docs/index.md; default exact, or with "
                        "--repair the index's own)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="encode with a Ray actor pool: a local loopback-only Ray, or the cluster at ADDRESS "
                        "(e.g. auto, ray://head:10001)")
    p.add_argument("--ray-actors", type=int, default=None, help="actors in the Ray pool (default: one per CPU/GPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=2048, help="images per resumable chunk")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true",
                      help="re-hash every stored file of the index at --out and load it; exit 2 if it is damaged")
    mode.add_argument("--repair", action="store_true",
                      help="rebuild the index at --out if it is damaged (missing, truncated or changed files)")
    add_feature_cache_arg(p)
    p.set_defaults(func=run)


def _recorded(args: argparse.Namespace) -> dict:
    """The manifest of the index at --out, when there is a readable one (for --repair defaults)."""
    from ..index import read_manifest

    try:
        return read_manifest(args.out)
    except CirlabError:
        return {}


def run(args: argparse.Namespace) -> int:
    if args.verify:
        return run_verify(args)
    from ..backbones import create_backbone
    from ..backbones.encoding import EncodeStats
    from ..index import build_index

    recorded = _recorded(args) if args.repair else {}
    gallery_src = args.gallery
    if gallery_src is None and recorded.get("gallery"):
        gallery_src = (args.out / recorded["gallery"]) if recorded.get("paths_root") == "index" \
            else Path(recorded["gallery"])
    if gallery_src is None:
        raise CirlabError("give the GALLERY to index (a dataset directory, gallery.jsonl or a folder of images)")
    gallery = open_gallery(gallery_src)
    backbone = create_backbone(args.backbone or recorded.get("backbone") or "tiny:world")
    index_spec = args.index_spec or recorded.get("index") or "exact"
    rel_gallery = _relative(gallery_src, args.out)
    stats = EncodeStats()
    try:
        index = build_index(backbone, gallery, args.out, index_spec, chunk_size=args.chunk_size,
                            batch_size=args.batch_size, extra={"gallery": rel_gallery}, ray=args.ray,
                            ray_options={"num_actors": args.ray_actors} if args.ray_actors else None,
                            repair=args.repair, cache=feature_cache(args), stats=stats)
    except (KeyError, ValueError) as e:  # a bad --index-spec (unknown kind, factory, option)
        raise CirlabError(f"--index-spec {index_spec!r}: {e.args[0] if e.args else e}") from None
    print(f"indexed {len(index)} images with {backbone.spec} ({index.spec}) -> {args.out}; {stats}")
    return 0


def _relative(path: Path, index_dir: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), index_dir.resolve())


def run_verify(args: argparse.Namespace) -> int:
    from ..index.integrity import verify_index

    n, problems = verify_index(args.out)
    if problems:
        raise CirlabError("\n  ".join([f"{args.out}: verification failed:", *problems]))
    print(f"OK {args.out}: {n} vectors, every stored file matches its checksum")
    return 0
