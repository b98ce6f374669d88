"""The ``cirlab`` command line. Each sub-command lives in its own module with a ``register``."""
from __future__ import annotations

import argparse
import copy
import importlib
import sys

from .. import logs
from ..errors import CirlabError

# modules under cirlab.cli that add sub-commands, in help order
COMMAND_MODULES = ["demo", "world", "train", "index", "search", "evaluate", "info", "serve", "bench", "experiment",
                   "experiment_daig", "experiment_generative", "plot", "zoo", "fiftyone_app"]


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless it has none, or the text already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text.lower() or not action.option_strings
                or default is None or default is argparse.SUPPRESS or isinstance(default, bool)):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and self._get_help_string(action):
            action = copy.copy(action)          # an option without help text still shows its default
            action.help = self._get_help_string(action)
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """The parser of ``cirlab`` and of every sub-command (sub-parsers inherit the class): defaults in --help."""

    def __init__(self, *args, **kwargs) -> None:
        fmt = kwargs.get("formatter_class", HelpFormatter)
        if not issubclass(fmt, HelpFormatter):    # e.g. RawDescriptionHelpFormatter: keep it, add the defaults
            fmt = type(f"Defaults{fmt.__name__}", (HelpFormatter, fmt), {})
        kwargs["formatter_class"] = fmt
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="cirlab", description="Composed image retrieval toolkit")
    parser.add_argument("--version", action="version", version=f"cirlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, full tracebacks, and the third-party libraries' own logs and bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.verbose)
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
