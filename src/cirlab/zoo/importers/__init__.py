"""Importers: an official checkpoint file -> a cirlab checkpoint directory (safetensors + JSON config).

Each importer module registers ``convert(src: Path, out_dir: Path, **kw) -> Path`` in ``IMPORTERS``
under the name a zoo entry refers to; the returned path is what the method (or backbone) spec takes.
Official files are read with ``cirlab.zoo.safe_load.load_weights_only`` only.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from ...registry import Registry

Importer = Callable[..., Path]
IMPORTERS: Registry[Importer] = Registry("importer")

IMPORTER_MODULES = ["clip4cir", "pic2word", "searle", "lincir"]
for _m in IMPORTER_MODULES:
    importlib.import_module(f"{__name__}.{_m}")


def convert(name: str, src: str | Path, out_dir: str | Path, **kw: Any) -> Path:
    """Run importer ``name`` on ``src`` into ``out_dir``."""
    return IMPORTERS.get(name)(Path(src), Path(out_dir), **kw)


__all__ = ["IMPORTERS", "IMPORTER_MODULES", "convert"]
