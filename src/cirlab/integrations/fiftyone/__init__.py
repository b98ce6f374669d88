"""cirlab in FiftyOne (extra ``fiftyone``): evaluation runs as FiftyOne datasets, and a Brain similarity
backend for composed queries. See docs/fiftyone.md.

Importing this package sets FiftyOne's environment for cirlab (``env.configure``: state under cirlab's
FiftyOne home, usage tracking off, App on 127.0.0.1, the ``cirlab`` similarity backend registered);
import it before ``fiftyone``.
"""
from __future__ import annotations

from typing import Any

from .env import configure, database, fiftyone_home

configure()

__all__ = ["compute_similarity", "configure", "database", "export_run", "fiftyone_home", "ranked_view"]


def __getattr__(name: str) -> Any:  # the parts that import fiftyone load on first use
    if name in ("export_run", "ranked_view"):
        from . import export

        return getattr(export, name)
    if name == "compute_similarity":
        from .similarity import compute_similarity

        return compute_similarity
    raise AttributeError(name)
