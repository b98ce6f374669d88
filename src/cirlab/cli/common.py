"""Helpers shared by CLI commands: loading datasets and indexes, printing tables."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.jsonl import write_json
from ..errors import CirlabError
from ..fileutil import atomic_write_text
from ..paths import default_index_dir
from ..tables import format_table

if TYPE_CHECKING:
    from ..data import CIRDataset, Gallery


def add_feature_cache_arg(p: argparse.ArgumentParser) -> None:
    """``--feature-cache PATH|off``: where encoded image features are kept across commands."""
    p.add_argument("--feature-cache", default=None, metavar="PATH",
                   help="SQLite file of image features shared by every command, so a gallery is encoded once "
                        "(default: $CIRLAB_FEATURE_CACHE, else $CIRLAB_CACHE/features.sqlite, else "
                        "~/.cache/cirlab/features.sqlite); 'off' encodes everything")


def feature_cache(args: argparse.Namespace) -> str | bool:
    """The ``cache`` argument of ``build_index`` for ``--feature-cache`` (True = the default cache)."""
    return getattr(args, "feature_cache", None) or True


def split_methods(text: str) -> list[str]:
    """``"image,sum,fusion-diff:ck,mix=0.5"`` -> ``["image", "sum", "fusion-diff:ck,mix=0.5"]``.

    Commas separate method specs, except before ``key=value`` options, which belong to the spec
    before them (method names never contain ``=``).
    """
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if specs and "=" in part and ":" not in part.split("=", 1)[0]:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


def experiment_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-commands of ``cirlab experiment`` (created by the first module that asks)."""
    parent = sub.choices.get("experiment")
    if parent is None:
        parent = sub.add_parser("experiment", help="reproducible experiments on the built-in world")
        esub = parent.add_subparsers(dest="experiment", metavar="NAME")
        esub.required = True
        return esub
    return next(a for a in parent._actions if isinstance(a, argparse._SubParsersAction))


def set_threads(threads: int | None) -> None:
    """``--threads N``: torch CPU threads (None: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def open_gallery(source: Path) -> "Gallery":
    from ..data import read_gallery

    if not source.exists():
        raise CirlabError(f"{source}: no such gallery (give a dataset directory, a gallery.jsonl or an image folder)")
    return read_gallery(source)


def open_dataset(path: Path) -> "CIRDataset":
    from ..data import load_dataset

    if not path.exists():
        raise CirlabError(f"{path}: no such dataset directory")
    return load_dataset(path)


__all__ = ["add_feature_cache_arg", "atomic_write_text", "default_index_dir", "experiment_subparsers", "feature_cache",
           "format_table", "open_dataset", "open_gallery", "set_threads", "split_methods", "write_json"]
