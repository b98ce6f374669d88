"""The official metrics of each benchmark, computed from rankings (values in percent).

The counting itself is ``cirlab.eval.metrics`` (``recall_at_k``, ``map_at_k``,
``average_precision_at_k``); this module only says which ranking and which targets
each protocol uses:

- **CIRR**: ``recall@1/5/10/50`` of the ranking over the split's gallery with the
  query's reference removed, against ``target_hard``; ``recall_subset@1/2/3`` of the
  ranking of ``img_set.members`` minus the reference, in the order of the global
  ranking; ``avg = (recall@5 + recall_subset@1) / 2``.
- **Fashion IQ**: per category, ``recall@10/50`` over that category's gallery
  (reference kept), keys ``<category>/recall@K``; with all three categories,
  ``average/recall@K`` (mean over categories) and ``avg`` (mean of the two averages).
- **CIRCO**: ``map@5/10/25/50`` against all ``gt_img_ids`` (AP@K divides by
  ``min(|GT|, K)``), ``recall@5/10/25/50`` against ``target_img_id`` only, and
  ``map@10/<aspect>`` over the queries tagged with each semantic aspect.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from ..data.record import CIRTriplet
from ..errors import CirlabError
from ..eval.metrics import map_at_k, recall_at_k

CIRR_RECALL_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FASHIONIQ_KS = (10, 50)
CIRCO_KS = (5, 10, 25, 50)
CIRCO_ASPECT_K = 10


def _rows(triplets: Sequence[CIRTriplet], rankings: Mapping[str, Sequence[str]], what: str) -> list[Sequence[str]]:
    missing = [t.id for t in triplets if t.id not in rankings]
    if missing:
        raise CirlabError(f"{what}: no ranking for {len(missing)} of {len(triplets)} queries "
                          f"(first: {', '.join(missing[:5])})")
    return [rankings[t.id] for t in triplets]


def labelled(triplets: Sequence[CIRTriplet]) -> list[CIRTriplet]:
    out = [t for t in triplets if t.targets]
    if not out:
        raise CirlabError("this split has no public ground truth: metrics need a labelled split (e.g. val)")
    return out


def cirr_subset_ranking(ranked: Sequence[str], members: Sequence[str], reference: str,
                        member_scores: Mapping[str, float], gallery_position: Mapping[str, int]) -> list[str]:
    """The set members other than the reference, in the order of the global ranking.

    ``ranked`` is the head of the global ranking (reference removed); members found
    there keep its order, the others follow by score (ties by gallery position, the
    order an exact index breaks ties in).
    """
    group = [m for m in dict.fromkeys(members) if m != reference]
    pos = {r: n for n, r in enumerate(ranked)}
    head = sorted((m for m in group if m in pos), key=pos.__getitem__)
    tail = sorted((m for m in group if m not in pos), key=lambda m: (-member_scores[m], gallery_position[m]))
    return head + tail


def without_reference(triplets: Sequence[CIRTriplet], ranked: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each ranking with its query's reference removed (the CIRR protocol does this before cutting at K)."""
    return [[x for x in r if x != t.reference] for t, r in zip(triplets, ranked)]


def cirr_metrics(triplets: Sequence[CIRTriplet], rankings: Mapping[str, Sequence[str]],
                 subset_rankings: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
    trips = labelled(triplets)
    gts = [t.targets for t in trips]
    ranked = without_reference(trips, _rows(trips, rankings, "cirr recall predictions"))
    out = {f"recall@{k}": recall_at_k(ranked, gts, k) for k in CIRR_RECALL_KS}
    if subset_rankings is not None:
        sub = _rows(trips, subset_rankings, "cirr recall_subset predictions")
        out.update({f"recall_subset@{k}": recall_at_k(sub, gts, k) for k in CIRR_SUBSET_KS})
        out["avg"] = (out["recall@5"] + out["recall_subset@1"]) / 2
    return out


def fashioniq_metrics(parts: Mapping[str, Sequence[CIRTriplet]], rankings: Mapping[str, Sequence[str]],
                      all_categories: Sequence[str] = ("dress", "shirt", "toptee")) -> dict[str, float]:
    out: dict[str, float] = {}
    for cat, triplets in parts.items():
        trips = labelled(triplets)
        ranked = _rows(trips, rankings, f"fashioniq {cat} predictions")
        for k in FASHIONIQ_KS:
            out[f"{cat}/recall@{k}"] = recall_at_k(ranked, [t.targets for t in trips], k)
    if set(parts) >= set(all_categories):
        for k in FASHIONIQ_KS:
            out[f"average/recall@{k}"] = sum(out[f"{c}/recall@{k}"] for c in all_categories) / len(all_categories)
        out["avg"] = sum(out[f"average/recall@{k}"] for k in FASHIONIQ_KS) / len(FASHIONIQ_KS)
    return out


def circo_metrics(triplets: Sequence[CIRTriplet], rankings: Mapping[str, Sequence[str]]) -> dict[str, float]:
    trips = labelled(triplets)
    ranked = _rows(trips, rankings, "circo predictions")
    gts = [t.targets for t in trips]
    out = {f"map@{k}": map_at_k(ranked, gts, k) for k in CIRCO_KS}
    single = [(str(t.meta.get("target", t.targets[0])),) for t in trips]
    out.update({f"recall@{k}": recall_at_k(ranked, single, k) for k in CIRCO_KS})
    by_aspect: dict[str, list[int]] = defaultdict(list)
    for n, t in enumerate(trips):
        for aspect in t.meta.get("semantic_aspects", []):
            by_aspect[aspect].append(n)
    for aspect in sorted(by_aspect):
        idx = by_aspect[aspect]
        out[f"map@{CIRCO_ASPECT_K}/{aspect}"] = map_at_k([ranked[i] for i in idx], [gts[i] for i in idx],
                                                        CIRCO_ASPECT_K)
    return out
