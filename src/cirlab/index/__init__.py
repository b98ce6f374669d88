"""Gallery indexes: one interface (``VectorIndex``), created from spec strings."""
from .base import INDEXES, VectorIndex, create_index, load_index, read_manifest
from .build import build_index, encode_gallery
from .exact import ExactIndex

__all__ = ["INDEXES", "ExactIndex", "VectorIndex", "build_index", "create_index", "encode_gallery", "load_index",
           "read_manifest"]
