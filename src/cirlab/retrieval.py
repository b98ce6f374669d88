"""The retriever: a backbone, a gallery index and a method, answering composed queries.

This is the object the CLI, the evaluation loop and the HTTP service all use::

    r = Retriever.from_index("runs/index", method="sum")
    hits = r.search("cat.jpg", "the same cat but sleeping", k=5)
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import Backbone, create_backbone
from .backbones.base import ImageLike
from .errors import CirlabError
from .index import VectorIndex, load_index
from .methods import Method, QueryBatch, create_method


def _file_digest(path: Path) -> bytes:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()


@dataclass
class Hit:
    id: str
    score: float
    path: str | None = None


class Retriever:
    def __init__(self, backbone: Backbone, index: VectorIndex, method: Method | str = "sum",
                 paths: dict[str, str] | None = None) -> None:
        self.backbone = backbone
        self.index = index
        self.method = create_method(method, backbone) if isinstance(method, str) else method
        self.paths = paths or {}
        self._files: dict[str, tuple[Path, int]] | None = None   # id -> (resolved path, size), made when needed

    @classmethod
    def from_index(cls, directory: str | os.PathLike[str], method: str = "sum", backbone: str | Backbone | None = None,
                   ) -> "Retriever":
        from .index import read_manifest
        from .index.build import manifest_paths

        manifest = read_manifest(directory)
        bb = backbone if isinstance(backbone, Backbone) else create_backbone(backbone or manifest["backbone"])
        index, manifest = load_index(directory, bb.spec, bb.embed_dim)
        if manifest.get("fingerprint") and manifest["fingerprint"] != bb.fingerprint():
            raise CirlabError(f"{directory}: index was built with other weights for {bb.spec!r}; re-run `cirlab index`")
        paths = dict(zip(manifest.get("ids", []), manifest_paths(directory, manifest)))
        return cls(bb, index, method, paths)

    def with_method(self, method: str | Method) -> "Retriever":
        return Retriever(self.backbone, self.index, method, self.paths)

    def gallery_ids_of(self, reference: ImageLike | str) -> list[str]:
        """The gallery ids that *are* ``reference``: its id, or the gallery images stored in the same file
        (same resolved path) or in a file with the same bytes (a copy). Empty for other images."""
        if isinstance(reference, str) and reference in self.paths:
            return [reference]
        if not isinstance(reference, (str, os.PathLike)) or not Path(reference).is_file():
            return []
        if self._files is None:
            self._files = {}
            for i, p in self.paths.items():
                try:
                    self._files[i] = (Path(p).resolve(), Path(p).stat().st_size)
                except OSError:
                    continue
        ref = Path(reference).resolve()
        same = [i for i, (p, _) in self._files.items() if p == ref]
        if same:
            return same
        size = ref.stat().st_size
        digest = _file_digest(ref)
        return [i for i, (p, n) in self._files.items() if n == size and _file_digest(p) == digest]

    # -- queries ---------------------------------------------------------------------------
    def reference_features(self, references: Sequence[ImageLike | str], raw: bool = False) -> torch.Tensor:
        """Image features of references given as gallery ids (read from the index) or images;
        normalised, or (``raw``) the raw projected features (the index's stored norms for gallery ids)."""
        feats, norms = self._reference_features(references, raw)
        return feats * norms.unsqueeze(-1) if norms is not None else feats

    def _reference_features(self, references: Sequence[ImageLike | str], with_norms: bool
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised features and (``with_norms``) the norms of the raw features."""
        out = torch.empty(len(references), self.backbone.embed_dim)
        norms = torch.empty(len(references)) if with_norms else None
        in_index = [n for n, r in enumerate(references) if isinstance(r, str) and r in self.paths]
        if in_index and hasattr(self.index, "vectors"):
            ids = [references[n] for n in in_index]
            try:
                out[in_index] = self.index.vectors(ids)  # type: ignore[misc]
            except NotImplementedError:
                in_index = []
            else:
                if norms is not None:
                    norms[in_index] = self.index.norms(ids)
        else:
            in_index = []
        rest = [n for n in range(len(references)) if n not in set(in_index)]
        if rest:
            raw = self.backbone.encode_images([self._image(references[n]) for n in rest], normalize=False)
            n_raw = raw.norm(dim=-1).clamp_min(1e-12)
            out[rest] = raw / n_raw.unsqueeze(-1)
            if norms is not None:
                norms[rest] = n_raw
        return out, norms

    def _image(self, ref: ImageLike | str) -> ImageLike:
        if isinstance(ref, str) and ref in self.paths:
            return self.paths[ref]
        if isinstance(ref, (str, os.PathLike)) and not Path(ref).is_file():
            raise CirlabError(f"reference {str(ref)!r} is neither a gallery id nor an image file")
        return ref

    def make_batch(self, references: Sequence[ImageLike | str], texts: Sequence[str]) -> QueryBatch:
        ids = [r if isinstance(r, str) and r in self.paths else None for r in references]
        images = [self._image(r) for r in references] if self.method.needs_pixels else None
        feats, norms = self._reference_features(references, self.method.needs_raw)
        return QueryBatch(list(texts), feats, images, [i or "" for i in ids], reference_norms=norms)

    @torch.no_grad()
    def search_batch(self, batch: QueryBatch, k: int = 10, exclude: Sequence[Sequence[str] | None] | None = None,
                     rescore_depth: int | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` ids per query; ``rescore_depth`` candidates go through the method's ``rescore``
        (``None``: the method's own ``rescore_depth``, 0 for methods that do not re-score)."""
        scores, ids, _ = self.search_variants([batch], k, exclude, rescore_depth)
        return scores, ids

    @torch.no_grad()
    def search_variants(self, batches: Sequence[QueryBatch], k: int = 10,
                        exclude: Sequence[Sequence[str] | None] | None = None, rescore_depth: int | None = None
                        ) -> tuple[np.ndarray, list[list[str]], torch.Tensor]:
        """Like ``search_batch`` for queries given as several text variants (one batch each, the same
        references): the normalised sum of the variants' queries ranks the index, and the re-scores of
        the variants are averaged. Also returns the (N, D) queries that ranked the index."""
        parts = [self.method.compose(b) for b in batches]
        queries = parts[0] if len(parts) == 1 else F.normalize(torch.stack([q.float() for q in parts]).sum(0), dim=-1)
        if rescore_depth is None:
            rescore_depth = self.method.rescore_depth
        depth = min(max(k, rescore_depth), len(self.index))
        scores, ids = self.index.search(queries, depth, exclude)
        if rescore_depth and type(self.method).rescore is not Method.rescore:
            feats = None
            if hasattr(self.index, "vectors"):
                feats = torch.stack([self.index.vectors(row) for row in ids])
            old = torch.from_numpy(scores)
            new = torch.stack([self.method.rescore(b, q, ids, old, feats).float()
                               for b, q in zip(batches, parts)]).mean(0).numpy()
            order = np.argsort(-new, axis=1, kind="stable")
            scores = np.take_along_axis(new, order, 1)
            ids = [[row[j] for j in o] for row, o in zip(ids, order)]
        return scores[:, :k], [row[:k] for row in ids], queries

    def search(self, reference: ImageLike | str, text: str, k: int = 10, exclude_reference: bool = True
               ) -> list[Hit]:
        batch = self.make_batch([reference], [text])
        exclude = [self.gallery_ids_of(reference)] if exclude_reference else None
        scores, ids = self.search_batch(batch, k, exclude)
        return [Hit(i, float(s), self.paths.get(i)) for i, s in zip(ids[0], scores[0])]
