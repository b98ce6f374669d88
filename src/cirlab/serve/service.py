"""The service's model side: a ``Retriever`` per method over one backbone and index.

Everything here is synchronous and thread-safe; the web app calls it from worker
threads so the event loop never waits on model work.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..errors import CirlabError
from ..methods import METHODS
from ..retrieval import Hit, Retriever
from .errors import RequestError
from .limits import ServeLimits


@dataclass
class SearchResult:
    hits: list[Hit]
    method: str
    elapsed_ms: float


def method_spec(retriever: Retriever) -> str:
    return getattr(retriever.method, "spec", "") or retriever.method.name


class SearchService:
    """Validated searches over ``retriever``'s index with any method in ``methods``.

    ``methods`` lists the specs a client may choose; each is built once, up front,
    sharing the retriever's backbone and index (a spec that cannot run raises
    ``CirlabError``). By default every registered method is tried and those that
    cannot run on this backbone without arguments (e.g. they need a trained
    checkpoint) are left out, with the reason in ``unavailable``; so are expensive
    methods (``Method.expensive``: an optimisation or a generation per query), which
    are offered only when listed. The retriever's own method is always offered and is
    the default. A client can only pick from this list, so it cannot pass method
    arguments (which may name files) of its own.
    """

    def __init__(self, retriever: Retriever, methods: Sequence[str] | None = None,
                 limits: ServeLimits | None = None) -> None:
        self.limits = limits or ServeLimits()
        self.base = retriever
        self.default_method = method_spec(retriever)
        self._retrievers: dict[str, Retriever] = {self.default_method: retriever}
        self.unavailable: dict[str, str] = {}
        for spec in (list(methods) if methods is not None else METHODS.names()):
            if spec in self._retrievers:
                continue
            try:
                made = retriever.with_method(spec)
            except Exception as e:  # noqa: BLE001 (any failure means: not offered)
                if methods is not None:
                    raise CirlabError(f"method {spec!r} cannot run on this index: {e}") from None
                self.unavailable[spec] = str(e)
                continue
            if methods is None and made.method.expensive:
                self.unavailable[spec] = f"expensive per query: offered only when listed (--methods ...,{spec})"
                continue
            self._retrievers[spec] = made
        self.methods = list(self._retrievers)
        self._id_list = retriever.index.ids  # the index does not change while serving
        self._ids = set(self._id_list) | set(retriever.paths)

    # -- lookups --------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.base.index)

    def gallery_ids(self) -> list[str]:
        return self._id_list

    def check_id(self, image_id: str, field: str = "id") -> str:
        """``image_id`` if it names a gallery image; 400 for path-like or malformed values, 404 if unknown."""
        if not image_id or len(image_id) > self.limits.max_id_chars:
            raise RequestError(400, f"{field}: an image id has 1 to {self.limits.max_id_chars} characters")
        parts = image_id.replace("\\", "/").split("/")
        if (any(ord(c) < 32 for c in image_id) or "\\" in image_id or image_id.startswith("/")
                or any(p in ("..", ".") for p in parts)):
            raise RequestError(400, f"{field}: {image_id!r} is not an image id (ids name gallery images, "
                                    "they are not paths)")
        if image_id not in self._ids:
            raise RequestError(404, f"{field}: no image with id {image_id!r} in this index")
        return image_id

    def image_path(self, image_id: str) -> Path:
        self.check_id(image_id)
        p = self.base.paths.get(image_id)
        if not p:
            raise RequestError(404, f"image {image_id!r} has no file recorded in the index")
        path = Path(p)
        if not path.is_file():
            raise RequestError(404, f"the file of image {image_id!r} is missing on the server")
        return path

    def check_method(self, method: str | None) -> str:
        spec = method or self.default_method
        if spec not in self.methods:
            raise RequestError(400, f"method: {spec!r} is not offered here; choose one of {', '.join(self.methods)}")
        return spec

    def retriever(self, method: str | None) -> Retriever:
        """The retriever for ``method`` (all share one backbone and index)."""
        return self._retrievers[self.check_method(method)]

    def is_expensive(self, method: str | None) -> bool:
        """Whether ``method`` (an offered spec, or the default) runs in the expensive methods' queue."""
        return bool(self.retriever(method).method.expensive)

    def check_query(self, text: str, k: int) -> tuple[str, int]:
        text = (text or "").strip()
        if not text:
            raise RequestError(400, "text: the modification text is empty")
        if len(text) > self.limits.max_text_chars:
            raise RequestError(400, f"text: {len(text)} characters; the limit is {self.limits.max_text_chars}")
        if not 1 <= k <= self.limits.max_k:
            raise RequestError(400, f"k: must be between 1 and {self.limits.max_k}, got {k}")
        return text, k

    # -- the work -------------------------------------------------------------------------
    def search(self, reference: str | Image.Image, text: str, k: int, method: str | None = None) -> SearchResult:
        """Top-``k`` gallery images for (reference, text); a gallery-id reference is left out of its results."""
        return self.search_many([SearchQuery(reference, text, k)], method)[0]

    def search_many(self, queries: Sequence["SearchQuery"], method: str | None = None) -> list[SearchResult]:
        """Several queries with one method, encoded and searched as one batch."""
        checked = []
        for q in queries:
            text, k = self.check_query(q.text, q.k)
            if isinstance(q.reference, str):
                self.check_id(q.reference, "reference_id")
            checked.append(SearchQuery(q.reference, text, min(k, self.size)))
        r = self.retriever(method)
        t0 = time.perf_counter()
        batch = r.make_batch([q.reference for q in checked], [q.text for q in checked])
        exclude = [[q.reference] if isinstance(q.reference, str) else None for q in checked]
        scores, ids = r.search_batch(batch, max(q.k for q in checked), exclude)
        ms = (time.perf_counter() - t0) * 1000
        spec = method_spec(r)
        return [SearchResult([Hit(i, float(s), r.paths.get(i)) for i, s in zip(row_ids[:q.k], row_scores[:q.k])],
                             spec, ms)
                for q, row_ids, row_scores in zip(checked, ids, scores)]


@dataclass
class SearchQuery:
    reference: str | Image.Image
    text: str
    k: int
