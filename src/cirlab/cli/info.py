"""``cirlab backbones`` / ``cirlab methods``: list what the registries hold."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("backbones", help="list backbone kinds (spec prefixes)")
    b.set_defaults(func=lambda a: _show(__import__("cirlab.backbones", fromlist=["x"]).list_backbones()))
    m = sub.add_parser("methods", help="list registered methods")
    m.set_defaults(func=lambda a: _show(__import__("cirlab.methods", fromlist=["x"]).list_methods()))


def _show(items: dict[str, str]) -> int:
    width = max((len(k) for k in items), default=0)
    for k, v in items.items():
        print(f"{k.ljust(width)}  {v}")
    return 0
