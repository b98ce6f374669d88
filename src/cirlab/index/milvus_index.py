"""``milvus:<uri>``: a Milvus collection as a cirlab index, embedded (Milvus Lite) or served.

Spec: ``milvus:<path>.db`` stores the collection in a local Milvus Lite database (the same client API,
running inside the process; ``pip install milvus-lite pymilvus``); ``milvus:http://host:19530`` talks
to a Milvus server or cluster. The code is the same for both. Options follow ``?``::

    milvus:gallery.db                                    FLAT (exact) index, collection "cirlab"
    milvus:/data/g.db?collection=shoes&index_type=HNSW&M=16&efConstruction=200&ef=128
    milvus:http://milvus.internal:19530?collection=catalogue&index_type=IVF_FLAT&nlist=4096&nprobe=32

* ``collection`` (default ``cirlab``): the collection name. Creating an index (``create_index`` /
  ``cirlab index``) drops and re-creates that collection; loading one reconnects to it.
* ``index_type`` (default ``FLAT``) with its build parameters (``nlist``, ``M``, ``efConstruction``,
  ``m``, ``nbits``) and search parameters (``nprobe``, ``ef``); the metric is always inner product.
* ``batch`` (default 2000): rows per insert request.

Credentials are never written to the manifest: a served Milvus that needs them reads ``MILVUS_TOKEN``
(``user:password`` or an API key) from the environment.

The vectors live in Milvus; ``save(dir)`` flushes the collection and writes the manifest (uri,
collection, parameters, ids). A relative ``.db`` path is resolved against the working directory when
the index is created, and stored relative to the index directory when it lies inside it, so an index
directory that holds its own ``.db`` can be moved as a whole.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pymilvus import DataType, MilvusClient

from ..errors import IndexMismatchError
from ..logs import quiet_milvus_lite
from .base import INDEXES, VectorIndex, as_tensor, first_k, max_excluded, parse_options, write_manifest

BUILD_PARAMS = {"nlist", "M", "efConstruction", "m", "nbits"}
SEARCH_PARAMS = {"nprobe", "ef"}
OPTIONS = {"collection", "index_type", "batch"}
ID_FIELD, VEC_FIELD = "id", "vector"
MAX_ID_LENGTH = 1024
MAX_TOPK = 16384  # Milvus caps limit (top-k) and nq per request
quiet_milvus_lite()


def _is_local(uri: str) -> bool:
    return uri.endswith(".db")


class MilvusIndex(VectorIndex):
    def __init__(self, uri: str, dim: int, collection: str = "cirlab", index_type: str = "FLAT", batch: int = 2000,
                 params: dict[str, Any] | None = None, create: bool = True) -> None:
        if not uri:
            raise ValueError("milvus index: give a Milvus Lite file (milvus:gallery.db) or a server "
                             "(milvus:http://host:19530)")
        if _is_local(uri):
            uri = str(Path(uri).expanduser().resolve())
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        elif not uri.startswith(("http://", "https://", "tcp://", "unix:")):
            raise ValueError(f"milvus index {uri!r}: expected a path ending in .db or an http(s):// address")
        params = dict(params or {})
        unknown = set(params) - BUILD_PARAMS - SEARCH_PARAMS
        if unknown:
            raise ValueError(f"milvus index: unknown option(s) {sorted(unknown)}; known: "
                             f"{sorted(OPTIONS | BUILD_PARAMS | SEARCH_PARAMS)}")
        self.uri = uri
        self.dim = dim
        self.collection = collection
        self.index_type = index_type.upper()
        self.batch = int(batch)
        self.params = params
        token = os.environ.get("MILVUS_TOKEN", "")
        self.client = MilvusClient(uri, token=token) if token else MilvusClient(uri)
        self._ids: dict[str, None] = {}  # insertion-ordered mirror of the collection's ids
        if create:
            self._create_collection()

    def _create_collection(self) -> None:
        c = self.client
        if c.has_collection(self.collection):
            c.drop_collection(self.collection)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
        schema.add_field(VEC_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        ip = c.prepare_index_params()
        build = {k: v for k, v in self.params.items() if k in BUILD_PARAMS}
        ip.add_index(field_name=VEC_FIELD, index_type=self.index_type, metric_type="IP", params=build)
        c.create_collection(self.collection, schema=schema, index_params=ip, consistency_level="Strong")

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def server_count(self) -> int:
        """Rows the collection holds according to Milvus (strongly consistent)."""
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def add(self, ids: Sequence[str], vectors: Any) -> None:
        x = as_tensor(vectors).numpy()
        self._check_add(ids, x, self._ids)
        long = [i for i in ids if len(i.encode()) > MAX_ID_LENGTH]
        if long:
            raise ValueError(f"milvus index: id {long[0][:60]!r}... is longer than {MAX_ID_LENGTH} bytes")
        for start in range(0, len(ids), self.batch):
            rows = [{ID_FIELD: i, VEC_FIELD: v} for i, v in
                    zip(ids[start:start + self.batch], x[start:start + self.batch].astype(np.float32).tolist())]
            self.client.insert(self.collection, rows)
            self._ids.update(dict.fromkeys(ids[start:start + self.batch]))

    def remove(self, ids: Sequence[str]) -> int:
        self._forget_norms(ids)
        present = [i for i in dict.fromkeys(ids) if i in self._ids]
        if present:
            self.client.delete(self.collection, ids=present)
            for i in present:
                del self._ids[i]
        return len(present)

    def vectors(self, ids: Sequence[str]) -> torch.Tensor:
        missing = [i for i in ids if i not in self._ids]
        if missing:
            raise KeyError(f"id {missing[0]!r} is not in the index")
        found: dict[str, list[float]] = {}
        uniq = list(dict.fromkeys(ids))
        for start in range(0, len(uniq), self.batch):
            for row in self.client.get(self.collection, ids=uniq[start:start + self.batch], output_fields=[VEC_FIELD]):
                found[row[ID_FIELD]] = row[VEC_FIELD]
        return torch.tensor([found[i] for i in ids], dtype=torch.float32).reshape(len(ids), self.dim)

    def search(self, queries: Any, k: int, exclude: Sequence[Sequence[str] | None] | None = None
               ) -> tuple[np.ndarray, list[list[str]]]:
        q = self._queries(queries)
        extra = max_excluded(exclude)
        kk = min(len(self._ids), k + extra)
        if kk > MAX_TOPK:
            raise ValueError(f"milvus index: top-{kk} exceeds Milvus's limit of {MAX_TOPK} results per query")
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        if kk == 0 or len(q) == 0:
            return out_s, [[] for _ in range(len(q))]
        sp = {"metric_type": "IP", "params": {k_: v for k_, v in self.params.items() if k_ in SEARCH_PARAMS}}
        x = q.numpy().astype(np.float32)
        hits: list[list[dict[str, Any]]] = []
        for start in range(0, len(x), 1024):
            hits += self.client.search(self.collection, data=x[start:start + 1024].tolist(), limit=kk,
                                       anns_field=VEC_FIELD, search_params=sp, output_fields=[ID_FIELD])
        return first_k([[(h["distance"], h["id"]) for h in row] for row in hits], k, exclude)

    def close(self) -> None:
        self.client.close()

    def save(self, directory: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.client.flush(self.collection)
        uri = self.uri
        if _is_local(uri):
            try:
                uri = os.path.relpath(uri, d.resolve()) if Path(uri).is_relative_to(d.resolve()) else uri
            except ValueError:
                pass
        m = dict(manifest or {})
        if not self.spec:
            self.spec = f"milvus:{self.uri}"
        m.update(self.manifest_fields())
        m.update({"milvus_uri": uri, "collection": self.collection, "index_type": self.index_type,
                  "milvus_params": self.params, "batch": self.batch})
        write_manifest(d, m, files=self.save_norms(d))
        return d

    @staticmethod
    def load(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> "MilvusIndex":
        d = Path(directory)
        uri = manifest["milvus_uri"]
        if _is_local(uri) and not Path(uri).is_absolute():
            uri = str((d / uri).resolve())
        if _is_local(uri) and not Path(uri).exists():
            raise IndexMismatchError(f"{d}: the Milvus Lite database {uri} is missing; rebuild the index")
        index = MilvusIndex(uri, manifest["dim"], manifest["collection"], manifest.get("index_type", "FLAT"),
                            manifest.get("batch", 2000), manifest.get("milvus_params", {}), create=False)
        if not index.client.has_collection(index.collection):
            raise IndexMismatchError(f"{d}: Milvus at {uri} has no collection {index.collection!r}; rebuild the index")
        # a collection is "released" when the process that built it ends (always so with Milvus Lite):
        # searches and gets need it loaded again
        index.client.load_collection(index.collection)
        index._ids = dict.fromkeys(manifest["ids"])
        held = index.server_count()
        if held != len(index._ids):
            raise IndexMismatchError(f"{d}: collection {index.collection!r} at {uri} holds {held} vectors but the "
                                     f"manifest lists {len(index._ids)}; it was changed after `cirlab index`, rebuild it")
        return index


@INDEXES.register("milvus", help="Milvus collection: milvus:<file>.db (Milvus Lite) or milvus:http://host:19530")
def create_milvus(arg: str, dim: int, **kw: Any) -> MilvusIndex:
    uri, opts = parse_options(arg)
    opts.update(kw)
    main = {k: opts.pop(k) for k in list(opts) if k in OPTIONS}
    return MilvusIndex(uri, dim, params=opts, **main)


create_milvus.load = MilvusIndex.load  # type: ignore[attr-defined]
