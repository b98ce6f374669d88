"""``faiss:<factory string>``: any faiss index (flat, IVF, HNSW, PQ, ...) behind the cirlab interface.

Spec: ``faiss:<factory>[?option=value&...]``, the factory string as faiss's ``index_factory`` takes it,
built for inner product (cosine on our normalised vectors). Examples::

    faiss:Flat                          exact, faiss's BLAS brute force
    faiss:IVF256,Flat?nprobe=16         inverted lists, 16 of 256 probed per query
    faiss:HNSW32?efSearch=128           graph index
    faiss:IVF4096,PQ64?nprobe=32        compressed: 64 bytes per vector
    faiss:OPQ64,IVF4096,PQ64x8?nprobe=32&train_size=200000

Options are either *search parameters*, set through faiss's ``ParameterSpace`` (``nprobe``,
``efSearch``, ``ht``, ``k_factor_rf``, ...; any name faiss knows for that index), or build options:

* ``train_size`` (default 200000): indexes that need training (IVF, PQ, SQ, OPQ) are trained on the
  first ``add`` with a random sample of at most this many vectors (seeded by ``seed``, default 0);
* ``mmap=1``: a loaded index is memory-mapped (``faiss.IO_FLAG_MMAP``) instead of read into RAM.

Search parameters may also be passed as keyword arguments to ``create_index`` or changed later with
``index.set_search_params(nprobe=64)``; they are saved in the manifest and re-applied on load.

Ids: cirlab ids are strings; each gets a faiss int64 label from a counter, and the label <-> id map is
saved next to the index (``faiss-labels.safetensors``; ids themselves are in the manifest). ``remove``
uses faiss's ``remove_ids`` where the index supports it (flat, IVF, PQ, SQ); graph indexes (HNSW)
cannot delete, so removed labels become tombstones that search skips (it asks faiss for that many
more results); rebuild such an index after heavy deletion. ``vectors(ids)`` reconstructs stored
vectors: exact for ``Flat``/``HNSW``/``IVF*,Flat``, approximate for compressed codes (PQ, SQ).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import IndexMismatchError
from .base import (INDEXES, VectorIndex, as_tensor, first_k, max_excluded, parse_options, split_index_spec,
                   write_manifest)

INDEX_FILE = "faiss.index"
LABELS_FILE = "faiss-labels.safetensors"
BUILD_OPTIONS = {"train_size": 200_000, "seed": 0, "mmap": False}


def _native_ivf(index: Any) -> Any:
    """The IVF index that takes ``add_with_ids`` itself: ``index`` is an IVF, or pre-transforms
    (OPQ, PCA) in front of one. None for anything else (a refine wrapper around an IVF included)."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexIVF) else None


class FaissIndex(VectorIndex):
    """A faiss index for inner product, with a string-id <-> int64-label map."""

    def __init__(self, factory: str, dim: int, train_size: int = 200_000, seed: int = 0, mmap: bool = False,
                 index: Any = None, **search_params: Any) -> None:
        if not factory:
            raise ValueError("faiss index: give a factory string, e.g. 'faiss:Flat', 'faiss:IVF256,Flat', "
                             "'faiss:HNSW32'")
        self.factory = factory
        self.dim = dim
        self.train_size = int(train_size)
        self.seed = int(seed)
        self.mmap = bool(mmap)
        if index is None:
            try:
                index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as e:
                raise ValueError(f"faiss factory string {factory!r} is not valid for dim {dim}: "
                                 f"{str(e).strip().splitlines()[-1]}") from None
            ivf = _native_ivf(index)
            if ivf is None:  # flat, HNSW, PQ, SQ, refine wrappers: no native ids, wrap them
                index = faiss.IndexIDMap2(index)
            else:  # IVF keeps ids itself; a hash-table direct map makes reconstruct(label) work
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        self._index = index
        self._label: dict[str, int] = {}  # insertion-ordered: the order of ``ids``
        self._id_of: dict[int, str] = {}
        self._tombstones: set[int] = set()
        self._next = 0
        self.search_params: dict[str, Any] = {}
        self.set_search_params(**search_params)

    # -- parameters --------------------------------------------------------------------------
    def set_search_params(self, **params: Any) -> None:
        """Set search-time parameters (``nprobe``, ``efSearch``, ...) through faiss's ParameterSpace."""
        space = faiss.ParameterSpace()
        target = faiss.downcast_index(self._index)
        if isinstance(target, faiss.IndexIDMap):  # ParameterSpace does not look through refine wrappers in it
            target = faiss.downcast_index(target.index)
        for name, value in params.items():
            try:
                space.set_index_parameter(target, name, float(value) if isinstance(value, float) else int(value))
            except (RuntimeError, TypeError, ValueError):
                raise ValueError(f"faiss:{self.factory}: search parameter {name}={value!r} does not apply to this "
                                 f"index (IVF indexes take nprobe, HNSW takes efSearch; build options are "
                                 f"{sorted(BUILD_OPTIONS)})") from None
            self.search_params[name] = value

    # -- contents ----------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return list(self._label)

    def __len__(self) -> int:
        return len(self._label)

    @property
    def faiss_index(self) -> Any:
        """The underlying faiss index (labels are cirlab's int64 labels, not positions)."""
        return self._index

    def _train(self, x: np.ndarray) -> None:
        n = len(x)
        if n > self.train_size:
            rng = np.random.default_rng(self.seed)
            x = x[np.sort(rng.choice(n, self.train_size, replace=False))]
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None and len(x) < ivf.nlist:
            raise ValueError(f"faiss:{self.factory}: training needs at least nlist={ivf.nlist} vectors, got {len(x)}; "
                             f"use fewer lists (about n/39, e.g. IVF{max(1, len(x) // 39)},...) or add more vectors "
                             f"in the first call")
        try:
            self._index.train(np.ascontiguousarray(x))
        except RuntimeError as e:
            raise ValueError(f"faiss:{self.factory}: training on {len(x)} vectors failed: "
                             f"{str(e).strip().splitlines()[-1]}") from None

    def add(self, ids: Sequence[str], vectors: Any) -> None:
        x = as_tensor(vectors).numpy()
        self._check_add(ids, x, self._label)
        if not len(ids):
            return
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self._index.is_trained:
            self._train(x)
        labels = np.arange(self._next, self._next + len(ids), dtype=np.int64)
        self._index.add_with_ids(x, labels)
        self._next += len(ids)
        for i, lab in zip(ids, labels.tolist()):
            self._label[i] = lab
            self._id_of[lab] = i

    def remove(self, ids: Sequence[str]) -> int:
        self._forget_norms(ids)
        labels = [self._label[i] for i in dict.fromkeys(ids) if i in self._label]
        if not labels:
            return 0
        try:
            self._index.remove_ids(np.asarray(labels, dtype=np.int64))
        except RuntimeError:  # HNSW and other graph indexes cannot delete: tombstone the labels
            self._tombstones.update(labels)
        for lab in labels:
            del self._label[self._id_of.pop(lab)]
        return len(labels)

    def vectors(self, ids: Sequence[str]) -> torch.Tensor:
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for n, i in enumerate(ids):
            if i not in self._label:
                raise KeyError(f"id {i!r} is not in the index")
            out[n] = self._index.reconstruct(self._label[i])
        return torch.from_numpy(out)

    # -- search ------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, exclude: Sequence[Sequence[str] | None] | None = None
               ) -> tuple[np.ndarray, list[list[str]]]:
        q = self._queries(queries)
        extra = max_excluded(exclude)
        kk = min(self._index.ntotal, k + extra + len(self._tombstones))
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        if kk == 0 or len(q) == 0:
            return out_s, [[] for _ in range(len(q))]
        scores, labels = self._index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), kk)
        return first_k([zip(s_row, (self._id_of.get(lab) if lab >= 0 else None for lab in l_row))
                        for s_row, l_row in zip(scores.tolist(), labels.tolist())], k, exclude)

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (INDEX_FILE + ".tmp")
        faiss.write_index(self._index, str(tmp))
        os.replace(tmp, d / INDEX_FILE)
        tmp = d / (LABELS_FILE + ".tmp")
        save_file({"labels": torch.tensor(list(self._label.values()), dtype=torch.int64),
                   "tombstones": torch.tensor(sorted(self._tombstones), dtype=torch.int64),
                   "next": torch.tensor([self._next], dtype=torch.int64)}, str(tmp))
        os.replace(tmp, d / LABELS_FILE)
        m = dict(manifest or {})
        if not self.spec:
            self.spec = f"faiss:{self.factory}"
        m.update(self.manifest_fields())
        m.update({"faiss_factory": self.factory, "faiss_version": faiss.__version__,
                  "search_params": self.search_params, "train_size": self.train_size, "seed": self.seed})
        write_manifest(d, m, files=[INDEX_FILE, LABELS_FILE, *self.save_norms(d)])
        return d

    @staticmethod
    def load(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> "FaissIndex":
        d = Path(directory)
        for p in (d / INDEX_FILE, d / LABELS_FILE):
            if not p.is_file():
                raise IndexMismatchError(f"{p} not found (the faiss index in {d} is incomplete; rebuild it)")
        _, opts = parse_options(split_index_spec(manifest["index"])[1])
        mmap = bool(opts.get("mmap", False))
        raw = faiss.read_index(str(d / INDEX_FILE), faiss.IO_FLAG_MMAP if mmap else 0)
        if raw.d != manifest["dim"]:
            raise IndexMismatchError(f"{d / INDEX_FILE}: dim {raw.d}, the manifest says {manifest['dim']}")
        lab = load_file(str(d / LABELS_FILE))
        labels = lab["labels"].tolist()
        ids = manifest["ids"]
        if len(labels) != len(ids):
            raise IndexMismatchError(f"{d / LABELS_FILE}: {len(labels)} labels for {len(ids)} ids in the manifest")
        index = FaissIndex(manifest.get("faiss_factory", ""), manifest["dim"], manifest.get("train_size", 200_000),
                           manifest.get("seed", 0), mmap, index=raw, **manifest.get("search_params", {}))
        index._label = dict(zip(ids, labels))
        index._id_of = {lab_: i for i, lab_ in zip(ids, labels)}
        index._tombstones = set(lab["tombstones"].tolist())
        index._next = int(lab["next"][0])
        if raw.ntotal != len(labels) + len(index._tombstones):
            raise IndexMismatchError(f"{d / INDEX_FILE}: holds {raw.ntotal} vectors, the label map "
                                     f"{len(labels)} (+{len(index._tombstones)} deleted); rebuild the index")
        return index


@INDEXES.register("faiss", help="faiss index from a factory string, e.g. faiss:IVF256,Flat?nprobe=16, faiss:HNSW32")
def create_faiss(arg: str, dim: int, **kw: Any) -> FaissIndex:
    factory, opts = parse_options(arg)
    return FaissIndex(factory, dim, **{**opts, **kw})


create_faiss.load = FaissIndex.load  # type: ignore[attr-defined]
