"""The ``cirlab`` command line. Each sub-command lives in its own module with a ``register``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import CirlabError

# modules under cirlab.cli that add sub-commands, in help order
COMMAND_MODULES = ["demo", "world", "train", "index", "search", "evaluate", "info", "serve", "bench", "experiment",
                   "experiment_daig", "experiment_generative", "plot", "zoo", "fiftyone_app"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="cirlab", description="Composed image retrieval toolkit")
    parser.add_argument("--version", action="version", version=f"cirlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        result = args.func(args)
    except CirlabError as e:
        if args.verbose:
            raise
        print(f"cirlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cirlab: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
