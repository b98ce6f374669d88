"""``cirlab serve``: the HTTP API and search page over a saved index."""
from __future__ import annotations

import argparse
import socket
from pathlib import Path

from .common import split_methods


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an index over HTTP: JSON API (POST /search) and a search page")
    p.add_argument("--index", required=True, type=Path, help="index directory made by `cirlab index`")
    p.add_argument("--method", default="sum", help="default method spec (default: sum)")
    p.add_argument("--methods", default=None,
                   help="comma-separated method specs clients may choose (default: every registered method)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest accepted upload, in MiB")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest accepted image width x height")
    p.add_argument("--max-k", type=int, default=100, help="most results one request may ask for")
    p.add_argument("--model-workers", type=int, default=2, help="searches computed at the same time")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads per search (default: torch's own choice; 1 often serves small "
                        "models best, the workers already run in parallel)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CirlabError

    try:
        import uvicorn

        from ..serve import ServeLimits, create_app
        create_app  # noqa: B018 (imports fastapi)
    except ImportError as e:
        raise CirlabError(f"`cirlab serve` needs the serve extra ({e.name} is missing): "
                          "pip install 'cirlab[serve]'") from None
    from ..retrieval import Retriever

    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                             max_k=args.max_k, default_k=min(12, args.max_k), model_workers=args.model_workers)
    except ValueError as e:
        raise CirlabError(str(e)) from None
    from ..methods import METHODS
    from ..registry import split_spec

    methods = split_methods(args.methods) if args.methods else None
    unknown = [m for m in [args.method, *(methods or [])] if split_spec(m)[0] not in METHODS]
    if unknown:
        raise CirlabError(f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(METHODS.names())}")
    try:
        retriever = Retriever.from_index(args.index, method=args.method)
    except (KeyError, ValueError) as e:
        raise CirlabError(f"--method {args.method!r}: {e.args[0] if e.args else e}") from None
    app = create_app(retriever, methods=methods, limits=limits)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it
    # every keep-alive response waits ~40 ms for a delayed ACK (headers and body are separate writes)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise CirlabError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    sock.listen(128)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"cirlab serve: http://{host}:{port}/  ({len(retriever.index)} images, backbone {retriever.backbone.spec}, "
          f"method {args.method})", flush=True)
    config = uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
