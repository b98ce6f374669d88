"""Where cirlab keeps things by default (no heavy imports: the CLI uses it before loading models)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data import Gallery


def cache_root() -> Path:
    """Directory for cirlab's caches: ``$CIRLAB_CACHE`` or ``$XDG_CACHE_HOME/cirlab`` or ``~/.cache/cirlab``."""
    env = os.environ.get("CIRLAB_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cirlab"


def default_index_dir(gallery: "Gallery", backbone_spec: str) -> Path:
    """Where an index of ``gallery`` under ``backbone_spec`` is kept by default (in the user cache)."""
    h = hashlib.sha256(("\n".join(str(p.resolve()) for p in gallery.paths) + "|" + backbone_spec).encode())
    slug = "".join(c if c.isalnum() else "-" for c in backbone_spec)[:40]
    return cache_root() / "indexes" / f"{slug}-{h.hexdigest()[:12]}"
