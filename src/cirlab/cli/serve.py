"""``cirlab serve``: the HTTP API and search page over a saved index."""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from ..serve.access import TOKEN_ENV
from .common import split_methods


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an index over HTTP: JSON API (POST /search) and a search page")
    p.add_argument("--index", required=True, type=Path, help="index directory made by `cirlab index`")
    p.add_argument("--method", default="sum", help="default method spec (default: sum)")
    p.add_argument("--methods", default=None,
                   help="comma-separated method specs clients may choose (default: every registered method that "
                        "runs without arguments, except expensive ones such as searle-oti, which must be listed)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--token", default=None,
                   help=f"require this token (Authorization: Bearer TOKEN); visible to other users in the process "
                        f"list, so prefer --token-file or ${TOKEN_ENV}")
    p.add_argument("--token-file", type=Path, default=None, help="read the token from this file (first line)")
    p.add_argument("--allowed-hosts", default="",
                   help="comma-separated extra host names the Host header may carry (default: the --host address "
                        "and the loopback names; '*' allows any)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest accepted upload, in MiB")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest accepted image width x height")
    p.add_argument("--max-aspect", type=float, default=20.0, help="largest accepted long side / short side")
    p.add_argument("--max-k", type=int, default=100, help="most results one request may ask for")
    p.add_argument("--model-workers", type=int, default=2, help="searches computed at the same time")
    p.add_argument("--decode-workers", type=int, default=2, help="uploads decoded at the same time")
    p.add_argument("--decode-budget-mb", type=int, default=512,
                   help="MiB decoded uploads in flight may hold together (4 bytes a pixel); more wait")
    p.add_argument("--slow-workers", type=int, default=1, help="searches with expensive methods computed at once")
    p.add_argument("--slow-queue", type=int, default=8,
                   help="searches with expensive methods that may wait; more are answered 503")
    p.add_argument("--max-connections", type=int, default=64, help="open connections at most; more are answered 503")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a request (headers or body) may stall before the connection is dropped")
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
        from ..serve.access import ServeAccess, exposure_warning
        from ..serve.memory import map_large_blocks
        from ..serve.timeouts import guarded_protocol
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
                             max_aspect=args.max_aspect, max_k=args.max_k, default_k=min(12, args.max_k),
                             model_workers=args.model_workers, decode_workers=args.decode_workers,
                             decode_budget_mb=args.decode_budget_mb, slow_workers=args.slow_workers,
                             slow_queue=args.slow_queue, max_connections=args.max_connections,
                             body_timeout_s=args.body_timeout)
    except ValueError as e:
        raise CirlabError(str(e)) from None
    token = read_token(args)
    extra = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
    access = ServeAccess.for_bind(args.host, token, extra)
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
    app = create_app(retriever, methods=methods, limits=limits, access=access)
    map_large_blocks()  # decoded uploads go back to the OS when freed (cirlab.serve.memory)

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
          f"method {args.method}{', token required' if token else ''})", flush=True)
    warning = exposure_warning(args.host, token)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level, timeout_keep_alive=5,
                            http=guarded_protocol(limits.body_timeout_s, limits.max_connections))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def read_token(args: argparse.Namespace) -> str | None:
    """The token from --token, --token-file or $CIRLAB_SERVE_TOKEN (at most one of them), or ``None``."""
    from ..errors import CirlabError

    given = {name: value for name, value in (("--token", args.token), ("$" + TOKEN_ENV, os.environ.get(TOKEN_ENV)))
             if value}
    if args.token_file is not None:
        try:
            lines = args.token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise CirlabError(f"--token-file {str(args.token_file)!r}: cannot read it ({e})") from None
        given["--token-file"] = lines[0].strip() if lines else ""
        if not given["--token-file"]:
            raise CirlabError(f"--token-file {str(args.token_file)!r}: the first line is empty")
    if len(given) > 1:
        raise CirlabError(f"the token is given twice ({' and '.join(given)}); give it once")
    token = next(iter(given.values()), None)
    if token is not None and (len(token) < 16 or any(c.isspace() for c in token)):
        raise CirlabError("the token must have at least 16 characters and no spaces "
                          "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token
