"""The model zoo: named pretrained configurations of the published methods, and their importers.

``cirlab.zoo.entries`` holds the registry of entries (``searle:vit-l14``, ``clip4cir:rn50x4-cirr``, ...),
each a data record: method and config, backbone, weight files, importer, preprocessing, an inference
preset per benchmark and the published numbers with their source. ``cirlab.zoo.fetch`` downloads
weight files (checksum, resume, atomic); ``cirlab.zoo.importers`` converts official checkpoint files
into cirlab checkpoint directories; ``cirlab.zoo.safe_load`` reads official pickles weights-only.
"""
from __future__ import annotations

from ..methods import SPEC_RESOLVERS
from .entries import ZOO, Published, WeightFile, ZooEntry, entries, get_entry
from .resolve import materialize, resolve_method_spec

if resolve_method_spec not in SPEC_RESOLVERS:
    SPEC_RESOLVERS.append(resolve_method_spec)

__all__ = ["ZOO", "Published", "WeightFile", "ZooEntry", "entries", "get_entry", "materialize", "resolve_method_spec"]
