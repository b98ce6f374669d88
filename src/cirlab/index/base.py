"""The index interface: numpy/torch in, (scores, ids) out; created from a spec string.

Spec strings are ``kind[:argument][?option=value&option=value]``: ``exact``,
``exact:fp16?mmap=1``, ``faiss:IVF256,Flat?nprobe=16``, ``milvus:gallery.db``.
Optional kinds (``faiss``, ``milvus``) are imported on first use, so their
packages are only needed when they are used. Every backend's ``save`` writes its
files atomically (write-then-rename) and then the manifest (``index.json``) with
the common fields of ``manifest_fields``; ``load_index`` checks them.

Raw features: the index searches L2-normalised vectors, and beside them keeps the L2
norm of each image's raw projected feature (``add_raw`` stores both; saved as
``norms.safetensors``, in the manifest's id order, for every backend). ``raw_vectors(ids)``
gives back ``norm * vector``, what the official learned modules take as input. An index
saved before norms were kept loads as before and says so when raw features are asked for.
"""
from __future__ import annotations

import abc
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any, Container, Iterable, Sequence

import numpy as np
import torch

from ..errors import IndexMismatchError
from ..fileutil import atomic_write_text, read_json_object, seal
from ..registry import Registry

MANIFEST = "index.json"
NORMS = "norms.safetensors"
METRIC = "ip"  # every backend ranks by inner product of L2-normalised vectors (= cosine)
# optional kinds: registry name -> module under cirlab.index, imported by ``ensure_kind``
OPTIONAL_KINDS = {"faiss": "faiss_index", "milvus": "milvus_index"}


def ids_checksum(ids: Sequence[str]) -> str:
    """A short hash of an ordered id list (recorded in manifests to detect a changed gallery)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _option_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def split_index_spec(spec: str) -> tuple[str, str]:
    """``"exact?mmap=1"`` -> ``("exact", "?mmap=1")``; ``"faiss:HNSW32?efSearch=64"`` -> ``("faiss", "HNSW32?efSearch=64")``."""
    cut = min((p for p in (spec.find(":"), spec.find("?")) if p >= 0), default=-1)
    if cut < 0:
        return spec.strip(), ""
    return spec[:cut].strip(), spec[cut + 1:].strip() if spec[cut] == ":" else spec[cut:].strip()


def parse_options(arg: str) -> tuple[str, dict[str, Any]]:
    """``"IVF256,Flat?nprobe=16&train_size=50000"`` -> ``("IVF256,Flat", {"nprobe": 16, "train_size": 50000})``."""
    main, sep, query = arg.partition("?")
    opts: dict[str, Any] = {}
    if sep:
        for part in filter(None, query.split("&")):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"index option {part!r} in {arg!r}: expected name=value")
            opts[key.strip()] = _option_value(value.strip())
    return main.strip(), opts


def as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or tensor, got {type(x).__name__}")
    return x.float()


def max_excluded(exclude: Sequence[Sequence[str] | None] | None) -> int:
    """The most ids any one query excludes (a backend fetches that many extra candidates)."""
    return max((len(e) for e in exclude if e), default=0) if exclude else 0


def first_k(candidates: Sequence[Iterable[tuple[float, str | None]]], k: int,
            exclude: Sequence[Sequence[str] | None] | None) -> tuple[np.ndarray, list[list[str]]]:
    """Per query, the first ``k`` ``(score, id)`` candidates whose id is neither ``None`` (a backend's
    empty slot) nor in ``exclude[q]``; scores (Q, k) float32, padded with -inf."""
    out_s = np.full((len(candidates), k), -np.inf, dtype=np.float32)
    out_ids: list[list[str]] = []
    for r, row_candidates in enumerate(candidates):
        skip = set(exclude[r]) if exclude and exclude[r] else set()
        row: list[str] = []
        if k > 0:
            for score, image_id in row_candidates:
                if image_id is None or image_id in skip:
                    continue
                out_s[r, len(row)] = score
                row.append(image_id)
                if len(row) == k:
                    break
        out_ids.append(row)
    return out_s, out_ids


class VectorIndex(abc.ABC):
    """Cosine (inner-product on normalised vectors) top-k search over ids."""

    spec: str = ""
    dim: int
    #: id -> L2 norm of that image's raw feature (set per instance by ``set_norms``)
    _norms: dict[str, float] | None = None
    #: where the index was loaded from (named in errors)
    source: str = ""

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

    def _queries(self, queries: Any) -> torch.Tensor:
        """``queries`` as a (Q, dim) float tensor; a single vector becomes one row."""
        q = as_tensor(queries)
        if q.ndim == 1:
            q = q.unsqueeze(0)
        if q.shape[1] != self.dim:
            raise IndexMismatchError(f"queries have dim {q.shape[1]}, the index has dim {self.dim}")
        return q

    def _check_add(self, ids: Sequence[str], x: Any, present: Container[str]) -> None:
        """The checks every backend's ``add`` makes: shape, one id per row, no id twice."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise IndexMismatchError(f"vectors of shape {tuple(x.shape)} do not fit an index of dim {self.dim}")
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        dup = [i for i in ids if i in present]
        if dup or len(set(ids)) != len(ids):
            raise ValueError(f"id(s) already in the index: {dup[:5] or 'duplicates within the batch'}")
        self._forget_norms(ids)  # vectors added without ``add_raw`` carry no raw norm

    def vectors(self, ids: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not return stored vectors")

    # -- raw-feature norms (shared by every backend) --------------------------------------------
    def add_raw(self, ids: Sequence[str], raw: Any) -> None:
        """Add raw (unnormalised) features: the index stores their directions and their L2 norms."""
        x = as_tensor(raw)
        if x.ndim != 2:
            raise IndexMismatchError(f"raw features of shape {tuple(x.shape)}: expected (N, {self.dim})")
        norms = x.norm(dim=-1)
        self.add(ids, x / norms.clamp_min(1e-12).unsqueeze(-1))
        self.set_norms(ids, norms)

    def set_norms(self, ids: Sequence[str], norms: Any) -> None:
        n = as_tensor(norms).reshape(-1)
        if len(n) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(n)} norms")
        if not bool(torch.isfinite(n).all()) or bool((n <= 0).any()):
            raise ValueError("raw-feature norms must be finite and positive")
        if self._norms is None:
            self._norms = {}
        self._norms.update(zip(ids, n.tolist()))

    def _forget_norms(self, ids: Sequence[str]) -> None:
        if self._norms:
            for i in ids:
                self._norms.pop(i, None)

    def has_norms(self, ids: Sequence[str] | None = None) -> bool:
        """Whether the raw-feature norms of ``ids`` (default: every id) are known."""
        table = self._norms or {}
        return all(i in table for i in (self.ids if ids is None else ids))

    def norms(self, ids: Sequence[str]) -> torch.Tensor:
        """(N,) L2 norms of the raw image features of ``ids``."""
        table = self._norms or {}
        missing = [i for i in ids if i not in table]
        if missing:
            where = f"the index in {self.source}" if self.source else "this index"
            raise IndexMismatchError(
                f"{where} holds no raw-feature norm for {missing[0]!r}"
                f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: raw image features are unavailable "
                f"(it was built before cirlab kept them, or the vectors were added without `add_raw`); a method that "
                f"takes raw features needs the index rebuilt with `cirlab index`")
        return torch.tensor([table[i] for i in ids], dtype=torch.float32)

    def raw_vectors(self, ids: Sequence[str]) -> torch.Tensor:
        """The raw image features of ``ids``: stored direction times stored norm."""
        return self.vectors(ids) * self.norms(ids).unsqueeze(-1)

    def save_norms(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write ``norms.safetensors`` (manifest id order) when every id has a norm; called by each ``save``,
        which seals the returned file names into the manifest."""
        ids = self.ids
        if not ids or not self.has_norms(ids):
            return []  # the manifest says raw_norms: false, so a stale file is never read
        from safetensors.torch import save_file

        p = Path(directory) / NORMS
        tmp = p.with_name(NORMS + ".tmp")
        save_file({"norms": self.norms(ids).contiguous()}, str(tmp))
        os.replace(tmp, p)
        return [NORMS]

    def load_norms(self, directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.source = str(directory)
        if not manifest.get("raw_norms"):
            return
        p = Path(directory) / NORMS
        if not p.is_file():
            raise IndexMismatchError(f"{p} not found, though {MANIFEST} says the index keeps raw-feature norms; "
                                     f"rebuild the index")
        from safetensors.torch import load_file

        n = load_file(str(p))["norms"]
        ids = manifest.get("ids") or self.ids
        if len(n) != len(ids):
            raise IndexMismatchError(f"{p}: {len(n)} norms for {len(ids)} ids in {MANIFEST}; rebuild the index")
        self._norms = dict(zip(ids, n.tolist()))

    def count(self) -> int:
        return len(self)

    def manifest_fields(self) -> dict[str, Any]:
        """The manifest fields every backend writes: spec, dim, metric, count, ids, id checksum, version."""
        from .. import __version__

        ids = self.ids
        return {"index": self.spec, "dim": self.dim, "metric": METRIC, "count": len(ids), "ids": ids,
                "ids_checksum": ids_checksum(ids), "cirlab": __version__,
                "raw_norms": bool(ids) and self.has_norms(ids)}


INDEXES: Registry[VectorIndex] = Registry("index")


def ensure_kind(kind: str) -> None:
    """Import the module of an optional index kind (``faiss``, ``milvus``) so it registers itself."""
    if kind in INDEXES or kind not in OPTIONAL_KINDS:
        return
    try:
        importlib.import_module(f"{__package__}.{OPTIONAL_KINDS[kind]}")
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith("cirlab"):
            raise IndexMismatchError(f"index kind {kind!r} needs the package {e.name!r}: "
                                     f"pip install 'cirlab[scale]'") from None
        raise


def create_index(spec: str, dim: int, **kwargs: Any) -> VectorIndex:
    kind, arg = split_index_spec(spec)
    ensure_kind(kind)
    index = INDEXES.get(kind)(arg, dim=dim, **kwargs)
    index.spec = spec
    return index


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(directory) / MANIFEST
    if not p.is_file():
        raise IndexMismatchError(f"{directory}: no index here ({MANIFEST} not found); build one with `cirlab index`")
    return read_json_object(p, IndexMismatchError, "corrupt manifest")


def write_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any], files: Sequence[str] = ()) -> None:
    """Write ``index.json`` atomically, last; ``files`` (names in ``directory``) are sealed into it
    (size, mtime, SHA-256), so every later load can tell whether they changed."""
    from .integrity import FILES_KEY

    if files:
        manifest = {**manifest, FILES_KEY: seal(directory, files)}
    atomic_write_text(Path(directory) / MANIFEST, json.dumps(manifest, indent=1))


def load_index(directory: str | os.PathLike[str], backbone_spec: str | None = None,
               dim: int | None = None) -> tuple[VectorIndex, dict[str, Any]]:
    """Load an index saved by ``VectorIndex.save``; checks it was built for this backbone/dim."""
    from .integrity import REPAIR_HINT, check_files

    manifest = read_manifest(directory)
    if backbone_spec is not None and manifest.get("backbone") not in (None, backbone_spec):
        raise IndexMismatchError(f"{directory}: index was built with backbone {manifest.get('backbone')!r}, "
                                 f"not {backbone_spec!r}; rebuild it or pass --backbone {manifest.get('backbone')}")
    if dim is not None and manifest.get("dim") != dim:
        raise IndexMismatchError(f"{directory}: index has dim {manifest.get('dim')}, the backbone gives {dim}")
    check_manifest(directory, manifest)
    check_files(directory, manifest)
    kind, _ = split_index_spec(manifest.get("index", "exact"))
    ensure_kind(kind)
    loader = getattr(INDEXES.get(kind), "load", None)
    if loader is None:
        raise IndexMismatchError(f"{directory}: index kind {kind!r} cannot be loaded")
    try:
        index = loader(directory, manifest)
    except IndexMismatchError:
        raise
    except Exception as e:  # a torn or foreign file that the backend's reader cannot parse
        raise IndexMismatchError(f"{directory}: the {kind} index cannot be read ({type(e).__name__}: {e}); "
                                 f"{REPAIR_HINT}") from None
    index.spec = manifest.get("index", kind)
    index.load_norms(directory, manifest)
    if "count" in manifest and len(index) != manifest["count"]:
        raise IndexMismatchError(f"{directory}: the {kind} index holds {len(index)} vectors but {MANIFEST} "
                                 f"says count={manifest['count']}; the index was changed after it was saved, rebuild it")
    return index, manifest


def check_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Internal consistency of a manifest: count, ids and their checksum agree; metric is ours."""
    where = Path(directory) / MANIFEST
    ids = manifest.get("ids")
    if ids is not None and "count" in manifest and len(ids) != manifest["count"]:
        raise IndexMismatchError(f"{where}: count={manifest['count']} but {len(ids)} ids are listed")
    if ids is not None and "ids_checksum" in manifest and "metric" in manifest \
            and ids_checksum(ids) != manifest["ids_checksum"]:
        raise IndexMismatchError(f"{where}: ids_checksum {manifest['ids_checksum']} does not match the listed ids "
                                 f"({ids_checksum(ids)}); the manifest was edited or torn, rebuild the index")
    if manifest.get("metric", METRIC) != METRIC:
        raise IndexMismatchError(f"{where}: metric {manifest['metric']!r} is not supported (cirlab uses {METRIC!r})")
