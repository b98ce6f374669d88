"""The ``cirlab`` similarity backend for the FiftyOne Brain: composed queries over a FiftyOne dataset.

Indexing::

    import fiftyone.brain as fob
    fob.compute_similarity(dataset, backend="cirlab", backbone="tiny:world", method="sum",
                           embeddings=False, brain_key="cir")      # or cirlab's compute_similarity(...)

builds (or reuses) a cirlab index of the dataset's images (``index``: any cirlab index spec, default
``exact``; ``index_dir``: where; ``id_field``: a field holding each image's cirlab id, default the
FiftyOne sample id). ``embeddings=False`` keeps FiftyOne from computing embeddings itself with its
default zoo model: cirlab encodes the images.

Queries (``dataset.sort_by_similarity(query, k=..., brain_key="cir")``, or the App's search box):

- a prompt ``REFERENCE | TEXT``: a composed query. REFERENCE is a sample id, a value of ``id_field``
  or an image file; TEXT the modification. Ranked by the run's method exactly as ``cirlab search``
  ranks it (the reference itself is left out, as ``cirlab search`` does by default);
- a prompt without ``|``: a text-only query (the backbone's text feature);
- sample ids: their image features (averaged when several);
- a vector or an array of vectors (averaged).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from bson import ObjectId
from fiftyone.brain.similarity import Similarity, SimilarityConfig, SimilarityIndex

from ...errors import CirlabError

logger = logging.getLogger(__name__)
PROMPT_SEPARATOR = "|"


class CirlabSimilarityConfig(SimilarityConfig):
    """Configuration of a ``cirlab`` similarity index.

    Args:
        backbone: cirlab backbone spec (``tiny:world``, ``hf:...``)
        method: cirlab method spec used for composed prompts (``sum``, ``weighted:0.2``, ...)
        index: cirlab index spec (``exact``, ``faiss:...``)
        index_dir: the cirlab index directory (default: under cirlab's FiftyOne home)
        id_field: sample field with each image's cirlab id (default: the sample id)
    """

    def __init__(self, backbone: str = "tiny:world", method: str = "sum", index: str = "exact",
                 index_dir: str | None = None, id_field: str | None = None, owns_index: bool | None = None,
                 **kwargs: Any) -> None:
        kwargs["supports_prompts"] = True
        kwargs.pop("model", None)  # cirlab encodes; a FiftyOne model is never stored
        super().__init__(**kwargs)
        self.backbone = backbone
        self.method_spec = method
        self.index = index
        if index_dir is None:  # a directory of its own under cirlab's FiftyOne home, removed by cleanup()
            import uuid

            from .env import fiftyone_home

            index_dir, owns_index = fiftyone_home() / "brain" / uuid.uuid4().hex, True
        self.index_dir = str(index_dir)
        self.id_field = id_field
        self.owns_index = bool(owns_index)

    @property
    def method(self) -> str:
        return "cirlab"

    @property
    def max_k(self) -> None:
        return None

    @property
    def supports_least_similarity(self) -> bool:
        return False

    @property
    def supported_aggregations(self) -> tuple[str, ...]:
        return ("mean",)


class CirlabSimilarity(Similarity):
    """The factory FiftyOne builds from ``CirlabSimilarityConfig``."""

    def ensure_requirements(self) -> None:
        pass

    def ensure_usage_requirements(self) -> None:
        pass

    def initialize(self, samples: Any, brain_key: str | None) -> "CirlabSimilarityIndex":
        index = CirlabSimilarityIndex(samples, self.config, brain_key, backend=self)
        index.build()
        return index


class _Composed:
    """A parsed composed prompt: the reference (cirlab id or image path) and the text."""

    def __init__(self, reference: str, text: str, in_index: bool) -> None:
        self.reference, self.text, self.in_index = reference, text, in_index


class CirlabSimilarityIndex(SimilarityIndex):
    """A cirlab ``Retriever`` behind FiftyOne's similarity interface."""

    def __init__(self, samples: Any, config: CirlabSimilarityConfig, brain_key: str | None, backend: Any = None
                 ) -> None:
        self._retriever = None
        self._to_sample: dict[str, str] | None = None
        self._to_cirlab: dict[str, str] | None = None
        super().__init__(samples, config, brain_key, backend=backend)

    # -- id maps and the retriever --------------------------------------------------------
    def _id_maps(self) -> tuple[dict[str, str], dict[str, str]]:
        if self._to_sample is None:
            root = self._samples._root_dataset
            field = self.config.id_field
            sample_ids, cirlab_ids = (root.values("id"), root.values("id")) if not field else root.values(
                ["id", field])
            self._to_sample = {str(c): s for s, c in zip(sample_ids, cirlab_ids) if c is not None}
            self._to_cirlab = {s: c for c, s in self._to_sample.items()}
        return self._to_sample, self._to_cirlab  # type: ignore[return-value]

    def _gallery(self, samples: Any) -> Any:
        from ...data import Gallery

        field = self.config.id_field or "id"
        ids, paths = samples.values([field, "filepath"])
        return Gallery([str(i) for i in ids], [Path(p) for p in paths])

    def build(self) -> None:
        """Encode the dataset's images into the cirlab index (reused when it is already built)."""
        from ...backbones import create_backbone
        from ...index import build_index
        from ...retrieval import Retriever

        backbone = create_backbone(self.config.backbone)
        gallery = self._gallery(self._samples._root_dataset)
        index = build_index(backbone, gallery, self.config.index_dir, self.config.index, progress=False)
        self._retriever = Retriever(backbone, index, self.config.method_spec,
                                    dict(zip(gallery.ids, map(str, gallery.paths))))
        self._to_sample = None
        self.reload()

    @property
    def retriever(self) -> Any:
        if self._retriever is None:
            from ...backbones import create_backbone
            from ...index import load_index
            from ...retrieval import Retriever

            if not (Path(self.config.index_dir) / "index.json").is_file():
                raise CirlabError(f"{self.config.index_dir}: the cirlab index of brain run {self.key!r} is gone; "
                                  "run compute_similarity again")
            backbone = create_backbone(self.config.backbone)
            index, manifest = load_index(self.config.index_dir, backbone.spec, backbone.embed_dim)
            paths = dict(zip(manifest.get("ids", []), manifest.get("paths", [])))
            if not paths:
                to_sample, _ = self._id_maps()
                root = self._samples._root_dataset
                by_id = dict(zip(*root.values(["id", "filepath"])))
                paths = {c: by_id[s] for c, s in to_sample.items() if s in by_id}
            self._retriever = Retriever(backbone, index, self.config.method_spec, paths)
        return self._retriever

    # -- FiftyOne's SimilarityIndex interface ----------------------------------------------
    @property
    def is_external(self) -> bool:
        return True

    @property
    def sample_ids(self) -> np.ndarray:
        to_sample, _ = self._id_maps()
        return np.array([to_sample[i] for i in self.retriever.index.ids if i in to_sample])

    @property
    def total_index_size(self) -> int:
        return len(self.retriever.index)

    def add_to_index(self, embeddings: Any, sample_ids: Sequence[str], label_ids: Any = None, overwrite: bool = True,
                     allow_existing: bool = True, warn_existing: bool = False, reload: bool = True) -> None:
        self._to_sample = None
        to_sample, to_cirlab = self._id_maps()
        ids = [to_cirlab.get(s, s) for s in sample_ids]
        index = self.retriever.index
        present = set(index.ids)
        old = [i for i in ids if i in present]
        if old and not overwrite:
            if not allow_existing:
                raise ValueError(f"{len(old)} id(s) already in the index, e.g. {old[0]!r}")
            keep = [n for n, i in enumerate(ids) if i not in present]
            ids, embeddings = [ids[n] for n in keep], np.asarray(embeddings)[keep]
        elif old:
            index.remove(old)
        if ids:
            index.add(ids, torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings)).float(), dim=-1))
            by_id = dict(zip(*self._samples._root_dataset.values(["id", "filepath"])))
            self.retriever.paths.update({i: by_id[to_sample[i]] for i in ids if to_sample.get(i) in by_id})
        self._save()
        if reload:
            self.reload()

    def remove_from_index(self, sample_ids: Sequence[str] | None = None, label_ids: Any = None,
                          allow_missing: bool = True, warn_missing: bool = False, reload: bool = True) -> None:
        _, to_cirlab = self._id_maps()
        ids = [to_cirlab.get(s, s) for s in (sample_ids or [])]
        present = set(self.retriever.index.ids)
        missing = [i for i in ids if i not in present]
        if missing and not allow_missing:
            raise ValueError(f"{len(missing)} id(s) are not in the index, e.g. {missing[0]!r}")
        self.retriever.index.remove([i for i in ids if i in present])
        self._save()
        if reload:
            self.reload()

    def _save(self) -> None:
        from ...index import read_manifest

        r = self.retriever
        manifest = {k: v for k, v in read_manifest(self.config.index_dir).items() if k in ("backbone", "fingerprint")}
        manifest["paths"] = [r.paths.get(i, "") for i in r.index.ids]
        r.index.save(self.config.index_dir, manifest)

    def get_embeddings(self, sample_ids: Any = None, label_ids: Any = None, allow_missing: bool = True,
                       warn_missing: bool = False) -> tuple[np.ndarray, np.ndarray, None]:
        to_sample, to_cirlab = self._id_maps()
        index = self.retriever.index
        if sample_ids is None:
            ids = list(index.ids)
        else:
            sample_ids = [sample_ids] if isinstance(sample_ids, str) else list(sample_ids)
            ids = [to_cirlab.get(s, s) for s in sample_ids]
            present = set(index.ids)
            if not allow_missing and any(i not in present for i in ids):
                raise ValueError("some requested ids are not in the index")
            ids = [i for i in ids if i in present]
        vectors = index.vectors(ids).numpy() if ids else np.zeros((0, index.dim), dtype=np.float32)
        return vectors, np.array([to_sample.get(i, i) for i in ids]), None

    def cleanup(self) -> None:
        import shutil

        if self.config.owns_index and self.config.index_dir and os.path.isdir(self.config.index_dir):
            shutil.rmtree(self.config.index_dir)

    def _parse_query(self, query: Any) -> Any:
        if isinstance(query, np.ndarray):
            return query
        items = [query] if isinstance(query, str) else list(query)
        if not items:
            raise ValueError("at least one query must be given")
        if not isinstance(items[0], str):
            return np.asarray(items, dtype=np.float32)
        try:
            ObjectId(items[0])
            return items  # sample ids
        except Exception:
            pass
        if len(items) == 1 and PROMPT_SEPARATOR in items[0]:
            return self.parse_prompt(items[0])
        return [p for p in items]  # text prompts (kept as strings, encoded in _kneighbors)

    def parse_prompt(self, prompt: str) -> _Composed:
        """``"REFERENCE | TEXT"`` -> the composed query (REFERENCE: sample id, ``id_field`` value or image file)."""
        ref, _, text = prompt.partition(PROMPT_SEPARATOR)
        ref, text = ref.strip(), text.strip()
        if not ref or not text:
            raise ValueError(f"composed prompt {prompt!r}: expected 'REFERENCE | TEXT' with both parts")
        _, to_cirlab = self._id_maps()
        paths = self.retriever.paths
        if ref in to_cirlab:
            return _Composed(to_cirlab[ref], text, True)
        if ref in paths:
            return _Composed(ref, text, True)
        if Path(ref).is_file():
            return _Composed(ref, text, False)
        raise ValueError(f"composed prompt {prompt!r}: reference {ref!r} is neither a sample id, "
                         f"an image id of this index nor an image file")

    def _allowed(self) -> set[str] | None:
        if not self.has_view:
            return None
        _, to_cirlab = self._id_maps()
        return {to_cirlab.get(s, s) for s in self.current_sample_ids}

    @torch.no_grad()
    def _kneighbors(self, query: Any = None, k: int | None = None, reverse: bool = False,
                    aggregation: str | None = None, return_dists: bool = False) -> Any:
        if query is None:
            raise ValueError("the cirlab backend does not support full-index neighbour queries")
        if reverse:
            raise ValueError("the cirlab backend does not support least-similarity queries")
        if aggregation not in (None, "mean"):
            raise ValueError(f"unsupported aggregation {aggregation!r}; cirlab supports 'mean'")
        r = self.retriever
        allowed = self._allowed()
        want = len(r.index) if k is None else int(k)
        depth = len(r.index) if allowed is not None else want
        if isinstance(query, _Composed):
            batch = r.make_batch([query.reference], [query.text])
            exclude = [[query.reference]] if query.in_index else None
            scores, ids = r.search_batch(batch, depth, exclude)
        else:
            vec = self._vector(query)
            scores, ids = r.index.search(vec, depth)
        to_sample, _ = self._id_maps()
        pairs = [(i, float(s)) for i, s in zip(ids[0], scores[0]) if allowed is None or i in allowed][:want]
        sample_ids = [to_sample.get(i, i) for i, _ in pairs]
        if return_dists:
            return sample_ids, None, [1.0 - s for _, s in pairs]
        return sample_ids, None

    def _vector(self, query: Any) -> torch.Tensor:
        r = self.retriever
        if isinstance(query, np.ndarray):
            v = torch.as_tensor(query, dtype=torch.float32)
            v = v.mean(0) if v.ndim == 2 else v
        elif all(_is_object_id(q) for q in query):
            _, to_cirlab = self._id_maps()
            missing = [q for q in query if q not in to_cirlab]
            if missing:
                raise ValueError(f"sample id {missing[0]!r} is not in this index")
            v = r.reference_features([to_cirlab[q] for q in query]).mean(0)
        else:
            v = r.backbone.encode_texts(list(query)).float().mean(0)
        return torch.nn.functional.normalize(v, dim=-1).unsqueeze(0)

    @classmethod
    def _from_dict(cls, d: dict[str, Any], samples: Any, config: CirlabSimilarityConfig, brain_key: str
                   ) -> "CirlabSimilarityIndex":
        return cls(samples, config, brain_key)


def _is_object_id(text: Any) -> bool:
    try:
        ObjectId(text)
        return True
    except Exception:
        return False


def compute_similarity(samples: Any, backbone: str = "tiny:world", method: str = "sum", brain_key: str = "cir",
                       index: str = "exact", index_dir: str | os.PathLike[str] | None = None,
                       id_field: str | None = "image_id", progress: bool = False) -> CirlabSimilarityIndex:
    """``fob.compute_similarity`` with the ``cirlab`` backend; replaces an earlier run of the same key that
    this backend made. ``id_field`` is used when the dataset has it (cirlab's exports do)."""
    import fiftyone.brain as fob

    from .env import configure

    configure()
    root = samples._root_dataset
    if id_field and not root.has_sample_field(id_field):
        id_field = None
    if brain_key in root.list_brain_runs():
        info = root.get_brain_info(brain_key)
        if getattr(info.config, "method", None) != "cirlab":
            raise CirlabError(f"{root.name}: brain key {brain_key!r} is taken by a {info.config.method!r} run")
        try:
            root.load_brain_results(brain_key).cleanup()  # its own index directory, if it made one
        except CirlabError:
            pass  # the index is already gone
        root.delete_brain_run(brain_key)
    return fob.compute_similarity(samples, backend=CirlabSimilarityConfig, backbone=backbone, method=method,
                                  index=index, index_dir=str(index_dir) if index_dir else None, id_field=id_field,
                                  embeddings=False, brain_key=brain_key, progress=progress)
