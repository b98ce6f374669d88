"""The index interface: numpy/torch in, (scores, ids) out; created from a spec string.

``create_index("exact")`` today; ANN and distributed backends (``faiss:...``,
``milvus:...``) register themselves in the same registry.
"""
from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import IndexMismatchError
from ..registry import Registry, split_spec

MANIFEST = "index.json"


def as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or tensor, got {type(x).__name__}")
    return x.float()


class VectorIndex(abc.ABC):
    """Cosine (inner-product on normalised vectors) top-k search over ids."""

    spec: str = ""
    dim: int

    @abc.abstractmethod
    def add(self, ids: Sequence[str], vectors: Any) -> None: ...

    @abc.abstractmethod
    def remove(self, ids: Sequence[str]) -> int: ...

    @abc.abstractmethod
    def search(self, queries: Any, k: int, exclude: Sequence[Sequence[str] | None] | None = None
               ) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` per query: scores (Q, k) float32 and ids; ids in ``exclude[q]`` are skipped."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def save(self, directory: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> Path: ...

    @property
    @abc.abstractmethod
    def ids(self) -> list[str]: ...

    def vectors(self, ids: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not return stored vectors")


INDEXES: Registry[VectorIndex] = Registry("index")


def create_index(spec: str, dim: int, **kwargs: Any) -> VectorIndex:
    kind, arg = split_spec(spec)
    index = INDEXES.get(kind)(arg, dim=dim, **kwargs)
    index.spec = spec
    return index


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(directory) / MANIFEST
    if not p.is_file():
        raise IndexMismatchError(f"{directory}: no index here ({MANIFEST} not found); build one with `cirlab index`")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise IndexMismatchError(f"{p}: corrupt manifest ({e.msg})") from None


def write_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    p = Path(directory) / MANIFEST
    tmp = p.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, p)


def load_index(directory: str | os.PathLike[str], backbone_spec: str | None = None,
               dim: int | None = None) -> tuple[VectorIndex, dict[str, Any]]:
    """Load an index saved by ``VectorIndex.save``; checks it was built for this backbone/dim."""
    manifest = read_manifest(directory)
    if backbone_spec is not None and manifest.get("backbone") not in (None, backbone_spec):
        raise IndexMismatchError(f"{directory}: index was built with backbone {manifest.get('backbone')!r}, "
                                 f"not {backbone_spec!r}; rebuild it or pass --backbone {manifest.get('backbone')}")
    if dim is not None and manifest.get("dim") != dim:
        raise IndexMismatchError(f"{directory}: index has dim {manifest.get('dim')}, the backbone gives {dim}")
    kind, _ = split_spec(manifest.get("index", "exact"))
    loader = getattr(INDEXES.get(kind), "load", None)
    if loader is None:
        raise IndexMismatchError(f"{directory}: index kind {kind!r} cannot be loaded")
    index = loader(directory, manifest)
    index.spec = manifest.get("index", kind)
    return index, manifest
