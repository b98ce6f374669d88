"""``exact``: brute-force cosine search in torch, chunked so memory stays bounded."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import IndexMismatchError
from .base import INDEXES, VectorIndex, as_tensor, write_manifest

FEATURES = "features.safetensors"


class ExactIndex(VectorIndex):
    def __init__(self, dim: int, dtype: torch.dtype = torch.float32, chunk: int = 65536) -> None:
        self.dim = dim
        self.dtype = dtype
        self.chunk = chunk
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
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise IndexMismatchError(f"vectors of shape {tuple(x.shape)} do not fit an index of dim {self.dim}")
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        dup = [i for i in ids if i in self._pos]
        if dup or len(set(ids)) != len(ids):
            raise ValueError(f"id(s) already in the index: {dup[:5] or 'duplicates within the batch'}")
        start = len(self._ids)
        self._ids.extend(ids)
        self._pos.update({i: start + n for n, i in enumerate(ids)})
        self._x = torch.cat([self._x, x.to(self.dtype)])

    def remove(self, ids: Sequence[str]) -> int:
        drop = {self._pos[i] for i in ids if i in self._pos}
        if not drop:
            return 0
        keep = [n for n in range(len(self._ids)) if n not in drop]
        self._x = self._x[keep]
        self._ids = [self._ids[n] for n in keep]
        self._pos = {i: n for n, i in enumerate(self._ids)}
        return len(drop)

    def vectors(self, ids: Sequence[str]) -> torch.Tensor:
        try:
            return self._x[[self._pos[i] for i in ids]].float()
        except KeyError as e:
            raise KeyError(f"id {e.args[0]!r} is not in the index") from None

    def all_vectors(self) -> torch.Tensor:
        return self._x

    @torch.no_grad()
    def search(self, queries: Any, k: int, exclude: Sequence[Sequence[str] | None] | None = None
               ) -> tuple[np.ndarray, list[list[str]]]:
        q = as_tensor(queries)
        if q.ndim == 1:
            q = q.unsqueeze(0)
        if q.shape[1] != self.dim:
            raise IndexMismatchError(f"queries have dim {q.shape[1]}, the index has dim {self.dim}")
        n = len(self._ids)
        extra = max((len(e) for e in exclude if e), default=0) if exclude else 0
        kk = min(n, k + extra)
        best_s = torch.full((len(q), 0), float("-inf"))
        best_i = torch.empty((len(q), 0), dtype=torch.long)
        for start in range(0, n, self.chunk):
            block = self._x[start:start + self.chunk]
            s = q.to(block.dtype) @ block.T
            s = s.float()
            cs, ci = s.topk(min(kk, s.shape[1]), dim=1)
            best_s = torch.cat([best_s, cs], 1)
            best_i = torch.cat([best_i, ci + start], 1)
            if best_s.shape[1] > kk:
                best_s, sel = best_s.topk(kk, dim=1)
                best_i = best_i.gather(1, sel)
        # stable order: score descending, then position ascending (ties broken by insertion order)
        order = np.lexsort((best_i.numpy(), -best_s.numpy()), axis=1)
        scores = np.take_along_axis(best_s.numpy(), order, 1)
        idx = np.take_along_axis(best_i.numpy(), order, 1)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_ids: list[list[str]] = []
        for r in range(len(q)):
            skip = set(exclude[r]) if exclude and exclude[r] else set()
            row = []
            for c in range(idx.shape[1]):
                image_id = self._ids[idx[r, c]]
                if image_id in skip:
                    continue
                out_s[r, len(row)] = scores[r, c]
                row.append(image_id)
                if len(row) == k:
                    break
            out_ids.append(row)
        return out_s, out_ids

    def save(self, directory: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (FEATURES + ".tmp")
        save_file({"features": self._x.contiguous()}, str(tmp))
        os.replace(tmp, d / FEATURES)
        m = dict(manifest or {})
        m.update({"index": self.spec or "exact", "dim": self.dim, "count": len(self), "ids": self._ids,
                  "dtype": str(self.dtype).replace("torch.", "")})
        write_manifest(d, m)
        return d

    @staticmethod
    def load(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> "ExactIndex":
        p = Path(directory) / FEATURES
        if not p.is_file():
            raise IndexMismatchError(f"{p} not found")
        x = load_file(str(p))["features"]
        ids = manifest["ids"]
        if len(ids) != len(x) or x.shape[1] != manifest["dim"]:
            raise IndexMismatchError(f"{p}: {tuple(x.shape)} features do not match the manifest "
                                     f"({len(ids)} ids, dim {manifest['dim']})")
        index = ExactIndex(manifest["dim"], dtype=x.dtype)
        index._ids = list(ids)
        index._pos = {i: n for n, i in enumerate(ids)}
        index._x = x
        return index


@INDEXES.register("exact", help="brute-force cosine search in torch (exact; 'exact:fp16' stores half precision)")
def create_exact(arg: str, dim: int, **kw: Any) -> ExactIndex:
    dtype = {"": torch.float32, "fp32": torch.float32, "fp16": torch.float16}.get(arg)
    if dtype is None:
        raise ValueError(f"exact index option {arg!r}: use 'exact' or 'exact:fp16'")
    return ExactIndex(dim, dtype=dtype, **kw)


create_exact.load = ExactIndex.load  # type: ignore[attr-defined]
