"""``exact``: brute-force cosine search in torch, blocked so memory stays bounded and caches stay warm.

Spec: ``exact`` (float32), ``exact:fp16`` (half-precision storage, scores computed in float32 one
block at a time), and the option ``?mmap=1`` (``exact?mmap=1``, ``exact:fp16?mmap=1``): a loaded
index memory-maps ``features.safetensors`` instead of reading it, so an index larger than RAM is
searched straight from the page cache.

Search multiplies a block of up to ``query_block`` queries with ``chunk`` gallery rows at a time into
one reused buffer, keeps each block's top-k, and merges; small tiles are markedly faster than one big
score matrix (the tile stays in cache and no page is faulted in per call).

``?engine=``: ``torch`` (the blocked search above), ``faiss`` (faiss's brute-force ``knn`` on the same
float32 rows, no copy: its sgemm tiles and heap selection beat torch's per-block ``topk`` on large
galleries searched with many queries at once, and its single-query scan beats a loop of small matmuls),
or ``auto`` (default): faiss, when it is installed, for float32 storage of at least ``FAISS_MIN_ROWS``
rows searched with at most ``FAISS_MAX_FEW`` or at least ``FAISS_MIN_QUERIES`` queries per call (the
shapes where it was measured faster: ``benchmarks/index_search.py``, docs/performance.md), torch
otherwise. Both return the same top-k (ties at the k-th score aside).
"""
from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import IndexMismatchError
from .base import (INDEXES, VectorIndex, as_tensor, first_k, max_excluded, parse_options, split_index_spec,
                   write_manifest)

FEATURES = "features.safetensors"
ENGINES = ("auto", "torch", "faiss")
#: ``engine=auto`` hands a float32 search to faiss from this many gallery rows, when a call has at most
#: ``FAISS_MAX_FEW`` queries, or at least ``FAISS_MIN_QUERIES`` queries and ``FAISS_MIN_ROWS_MANY`` rows.
#: Measured on a quiet 2-core machine (docs/performance.md): the torch path wins up to 128 queries per call
#: (1.8x faiss for one query, 5-12x at 32-128), faiss from 256 queries on 20k and 100k rows.
FAISS_MIN_ROWS = 4096
FAISS_MAX_FEW = 0
FAISS_MIN_QUERIES = 256
FAISS_MIN_ROWS_MANY = 16_384
_ST_DTYPES = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16)}


def mmap_safetensors(path: str | os.PathLike[str], name: str = "features") -> torch.Tensor:
    """A read-only tensor backed by the bytes of ``name`` inside a safetensors file (no copy)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    if name not in header:
        raise IndexMismatchError(f"{path}: no tensor {name!r} (has {sorted(k for k in header if k != '__metadata__')})")
    info = header[name]
    if info["dtype"] not in _ST_DTYPES:
        raise IndexMismatchError(f"{path}: tensor {name!r} has dtype {info['dtype']}; memory-mapping supports "
                                 f"{sorted(_ST_DTYPES)}")
    np_dtype, _ = _ST_DTYPES[info["dtype"]]
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end == start:
        return torch.from_numpy(np.zeros(shape, dtype=np_dtype))
    arr = np.memmap(path, dtype=np_dtype, mode="r", offset=8 + n + start, shape=shape)
    with warnings.catch_warnings():  # read-only mapping: torch warns that it cannot be written, as intended
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _faiss() -> Any:
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class ExactIndex(VectorIndex):
    def __init__(self, dim: int, dtype: torch.dtype = torch.float32, chunk: int = 4096, query_block: int = 1024,
                 mmap: bool = False, engine: str = "auto") -> None:
        if engine not in ENGINES:
            raise ValueError(f"exact index: engine {engine!r}; use one of {', '.join(ENGINES)}")
        self.engine = engine
        self.dim = dim
        self.dtype = dtype
        self.chunk = chunk
        self.query_block = query_block
        self.mmap = mmap
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._x = torch.empty(0, dim, dtype=dtype)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: Sequence[str], vectors: Any) -> None:
        x = as_tensor(vectors)
        self._check_add(ids, x, self._pos)
        start = len(self._ids)
        self._ids.extend(ids)
        self._pos.update({i: start + n for n, i in enumerate(ids)})
        self._x = torch.cat([self._x, x.to(self.dtype)])

    def remove(self, ids: Sequence[str]) -> int:
        self._forget_norms(ids)
        drop = sorted({self._pos[i] for i in ids if i in self._pos})
        if not drop:
            return 0
        keep = torch.ones(len(self._ids), dtype=torch.bool)
        keep[drop] = False
        self._x = self._x[keep]
        gone = set(drop)
        self._ids = [i for n, i in enumerate(self._ids) if n not in gone]
        self._pos = {i: n for n, i in enumerate(self._ids)}
        return len(drop)

    def vectors(self, ids: Sequence[str]) -> torch.Tensor:
        try:
            return self._x[[self._pos[i] for i in ids]].float()
        except KeyError as e:
            raise KeyError(f"id {e.args[0]!r} is not in the index") from None

    def all_vectors(self) -> torch.Tensor:
        return self._x

    def engine_for(self, n_queries: int) -> str:
        """``torch`` or ``faiss``: which engine searches ``n_queries`` queries in this index."""
        if self.engine != "auto":
            return self.engine
        n = len(self._ids)
        shape = n >= FAISS_MIN_ROWS and (n_queries <= FAISS_MAX_FEW
                                         or (n_queries >= FAISS_MIN_QUERIES and n >= FAISS_MIN_ROWS_MANY))
        return "faiss" if self.dtype == torch.float32 and shape and _faiss() is not None else "torch"

    def _topk_faiss(self, q: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
        faiss = _faiss()
        if faiss is None:
            raise IndexMismatchError("exact index: engine=faiss needs faiss (pip install 'cirlab[faiss]')")
        x = self._x if self._x.dtype == torch.float32 else self._x.float()
        scores, pos = faiss.knn(q.numpy(), x.contiguous().numpy(), kk, metric=faiss.METRIC_INNER_PRODUCT)
        return torch.from_numpy(scores), torch.from_numpy(pos)

    @torch.no_grad()
    def _topk_positions(self, q: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, kk) best scores and row positions, exact, by blocks of queries x gallery rows."""
        if self.engine_for(len(q)) == "faiss":
            return self._topk_faiss(q, kk)
        n = len(self._ids)
        out_s = torch.empty(len(q), kk)
        out_i = torch.empty(len(q), kk, dtype=torch.long)
        chunk = max(1, self.chunk)
        buf = torch.empty(min(self.query_block, len(q)), min(chunk, n))
        merge_every = max(1, 8192 // max(kk, 1))  # merge block winners before they grow large
        for q0 in range(0, len(q), self.query_block):
            qb = q[q0:q0 + self.query_block]
            best_s = torch.empty(len(qb), 0)
            best_i = torch.empty(len(qb), 0, dtype=torch.long)
            pend_s, pend_i = [best_s], [best_i]
            for b, start in enumerate(range(0, n, chunk)):
                block = self._x[start:start + chunk]
                if block.dtype != torch.float32:
                    block = block.float()
                s = buf[:len(qb), :len(block)]
                torch.matmul(qb, block.T, out=s)
                cs, ci = s.topk(min(kk, len(block)), dim=1)
                pend_s.append(cs)
                pend_i.append(ci + start)
                if len(pend_s) > merge_every:
                    best_s, best_i = self._merge(pend_s, pend_i, kk)
                    pend_s, pend_i = [best_s], [best_i]
            best_s, best_i = self._merge(pend_s, pend_i, kk)
            out_s[q0:q0 + len(qb)] = best_s
            out_i[q0:q0 + len(qb)] = best_i
        return out_s, out_i

    @staticmethod
    def _merge(scores: list[torch.Tensor], pos: list[torch.Tensor], kk: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, i = torch.cat(scores, 1), torch.cat(pos, 1)
        if s.shape[1] > kk:
            s, sel = s.topk(kk, dim=1)
            i = i.gather(1, sel)
        return s, i

    @torch.no_grad()
    def search(self, queries: Any, k: int, exclude: Sequence[Sequence[str] | None] | None = None
               ) -> tuple[np.ndarray, list[list[str]]]:
        q = self._queries(queries)
        n = len(self._ids)
        extra = max_excluded(exclude)
        kk = min(n, k + extra)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        if kk == 0 or len(q) == 0:
            return out_s, [[] for _ in range(len(q))]
        best_s, best_i = self._topk_positions(q.contiguous(), kk)
        # stable order: score descending, then position ascending (ties broken by insertion order)
        order = np.lexsort((best_i.numpy(), -best_s.numpy()), axis=1)
        scores = np.take_along_axis(best_s.numpy(), order, 1)
        idx = np.take_along_axis(best_i.numpy(), order, 1)
        return first_k([zip(s_row, (self._ids[i] for i in i_row)) for s_row, i_row in zip(scores, idx)], k, exclude)

    def save(self, directory: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (FEATURES + ".tmp")
        save_file({"features": self._x.contiguous()}, str(tmp))
        os.replace(tmp, d / FEATURES)
        m = dict(manifest or {})
        if not self.spec:
            self.spec = "exact"
        m.update(self.manifest_fields())
        m["dtype"] = str(self.dtype).replace("torch.", "")
        write_manifest(d, m, files=[FEATURES, *self.save_norms(d)])
        return d

    @staticmethod
    def load(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> "ExactIndex":
        p = Path(directory) / FEATURES
        if not p.is_file():
            raise IndexMismatchError(f"{p} not found")
        _, opts = parse_options(split_index_spec(manifest.get("index", "exact"))[1])
        mmap = bool(opts.get("mmap", False))
        engine = str(opts.get("engine", "auto"))
        x = mmap_safetensors(p) if mmap else load_file(str(p))["features"]
        ids = manifest["ids"]
        if len(ids) != len(x) or x.shape[1] != manifest["dim"]:
            raise IndexMismatchError(f"{p}: {tuple(x.shape)} features do not match the manifest "
                                     f"({len(ids)} ids, dim {manifest['dim']})")
        index = ExactIndex(manifest["dim"], dtype=x.dtype, mmap=mmap, engine=engine)
        index._ids = list(ids)
        index._pos = {i: n for n, i in enumerate(ids)}
        index._x = x
        return index


@INDEXES.register("exact", help="brute-force cosine search in torch (exact; 'exact:fp16' stores half precision; "
                                "'?mmap=1' memory-maps the saved features; '?engine=torch|faiss|auto')")
def create_exact(arg: str, dim: int, **kw: Any) -> ExactIndex:
    main, opts = parse_options(arg)
    dtype = {"": torch.float32, "fp32": torch.float32, "fp16": torch.float16}.get(main)
    if dtype is None:
        raise ValueError(f"exact index option {main!r}: use 'exact' or 'exact:fp16'")
    known = {"mmap", "chunk", "query_block", "engine"}
    unknown = set(opts) - known
    if unknown:
        raise ValueError(f"exact index: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    return ExactIndex(dim, dtype=dtype, **{**opts, **kw})


create_exact.load = ExactIndex.load  # type: ignore[attr-defined]
