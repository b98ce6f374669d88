"""Helpers shared by CLI commands: loading datasets and indexes, printing tables."""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import CirlabError

if TYPE_CHECKING:
    from ..data import CIRDataset, Gallery


def cache_root() -> Path:
    return Path(os.environ.get("CIRLAB_CACHE", Path.home() / ".cache" / "cirlab"))


def default_index_dir(gallery: "Gallery", backbone_spec: str) -> Path:
    h = hashlib.sha256(("\n".join(str(p.resolve()) for p in gallery.paths) + "|" + backbone_spec).encode())
    slug = "".join(c if c.isalnum() else "-" for c in backbone_spec)[:40]
    return cache_root() / "indexes" / f"{slug}-{h.hexdigest()[:12]}"


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


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


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(r.get(c, "")) if not isinstance(r.get(c), float) else f"{r[c]:.2f}" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if n else v.ljust(w) for n, (v, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join([line, sep, *body])
