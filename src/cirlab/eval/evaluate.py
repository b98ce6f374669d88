"""Evaluate a retriever on a dataset in the cirlab format."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..data.record import CIRDataset, CIRTriplet
from ..errors import DatasetError
from .metrics import grouped_metrics

if TYPE_CHECKING:  # torch-backed: imported where used, so the metrics import without torch
    from ..retrieval import Retriever

RANK_DEPTH = 50


@dataclass
class EvalResult:
    method: str
    backbone: str
    metrics: dict[str, float]
    per_kind: dict[str, dict[str, float]]
    rankings: dict[str, list[str]] = field(repr=False, default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "backbone": self.backbone, "metrics": self.metrics,
                "per_kind": self.per_kind, "config": self.config, "seconds": round(self.seconds, 2)}


def evaluate(retriever: "Retriever", dataset: CIRDataset, *, exclude_reference: bool = True, batch_size: int = 256,
             depth: int = RANK_DEPTH, rescore_depth: int | None = None, progress: bool = True) -> EvalResult:
    """Rank the gallery for every triplet with ground truth and compute metrics per edit kind.

    ``exclude_reference`` removes each query's reference image from its ranking before
    cutting at K (the CIRR convention; the built-in world uses it too).
    """
    t0 = time.time()
    trips = labelled_triplets(dataset)
    rankings: dict[str, list[str]] = {}
    for start in tqdm(range(0, len(trips), batch_size), desc=f"eval {retriever.method.spec}", unit="batch",
                      disable=not progress):
        chunk = trips[start:start + batch_size]
        batch = retriever.make_batch([t.reference for t in chunk], [t.caption for t in chunk])
        exclude = [[t.reference] for t in chunk] if exclude_reference else None
        _, ids = retriever.search_batch(batch, depth, exclude, rescore_depth)
        rankings.update({t.id: row for t, row in zip(chunk, ids)})
    ranked = [rankings[t.id] for t in trips]
    groups = [str(t.meta.get("kind", "all")) for t in trips]
    per = grouped_metrics(ranked, [t.targets for t in trips], groups)
    if any("heldout" in t.meta for t in trips):
        held = [i for i, t in enumerate(trips) if t.meta.get("heldout")]
        if held:
            per["heldout"] = grouped_metrics([ranked[i] for i in held], [trips[i].targets for i in held],
                                             ["heldout"] * len(held))["all"]
    overall = {k: round(v, 2) for k, v in per.pop("all").items() if k != "queries"}
    per = {g: {k: (round(v, 2) if k != "queries" else v) for k, v in m.items()} for g, m in per.items()}
    cfg = {"method": retriever.method.config(), "exclude_reference": exclude_reference, "dataset": dataset.name,
           "queries": len(trips), "gallery": len(retriever.index)}
    return EvalResult(retriever.method.spec, retriever.backbone.spec, overall, per, rankings, cfg, time.time() - t0)


def labelled_triplets(dataset: CIRDataset) -> list[CIRTriplet]:
    """Every triplet, each with targets; an empty gallery, no triplets or a triplet without targets
    (which would silently drop out of every metric) raise ``DatasetError``."""
    where = dataset.root or dataset.name
    if len(dataset.gallery) == 0:
        raise DatasetError(f"{where}: the gallery is empty; there is nothing to rank")
    if not dataset.triplets:
        raise DatasetError(f"{where}: no triplets to evaluate")
    unlabelled = [t.id for t in dataset.triplets if not t.targets]
    if unlabelled:
        first = ", ".join(map(repr, unlabelled[:5])) + (f" and {len(unlabelled) - 5} more" if len(unlabelled) > 5 else "")
        raise DatasetError(f"{where}: {len(unlabelled)} of {len(dataset.triplets)} triplets have no 'targets' "
                           f"({first}); metrics need the targets of every query (add them, or remove those triplets)")
    return list(dataset.triplets)


def evaluate_methods(dataset: CIRDataset, backbone: Any, methods: list[str], index_dir: Any, *,
                     index_spec: str = "exact", exclude_reference: bool = True, progress: bool = True,
                     cache: Any = True) -> list[EvalResult]:
    """Index ``dataset``'s gallery with ``backbone`` (reused when cached; ``cache``: the feature cache,
    see ``build_index``) and evaluate each method."""
    from ..index import build_index
    from ..methods import create_method
    from ..retrieval import Retriever

    # the data and the methods first: a bad dataset, spec or checkpoint fails before the (long) gallery encoding
    labelled_triplets(dataset)
    created = [create_method(m, backbone) for m in methods]
    index = build_index(backbone, dataset.gallery, index_dir, index_spec, progress=progress, repair=True,
                        cache=cache)
    base = Retriever(backbone, index, created[0], dict(zip(dataset.gallery.ids, map(str, dataset.gallery.paths))))
    return [evaluate(base.with_method(m), dataset, exclude_reference=exclude_reference, progress=progress)
            for m in created]
