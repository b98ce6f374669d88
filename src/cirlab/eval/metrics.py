"""Retrieval metrics on rankings (lists of gallery ids, best first). All values in percent.

Conventions (the official ones):
- Recall@K: a query is a hit when any of its targets is among the first K ids.
- AP@K (CIRCO): ``sum_{i<=K} P@i * rel(i) / min(|GT|, K)``; mAP@K is its mean.
- The reference image is removed from the ranking *before* cutting at K when a
  protocol says so (CIRR, the built-in world); ``rank_with_exclusion`` does that.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping, Sequence

RECALL_KS = (1, 5, 10, 50)
MAP_KS = (5, 10, 25, 50)


def recall_at_k(rankings: Sequence[Sequence[str]], targets: Sequence[Iterable[str]], k: int) -> float:
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings for {len(targets)} target lists")
    if not rankings:
        return float("nan")
    hits = 0
    for ranked, gt in zip(rankings, targets):
        gt = set(gt)
        hits += any(r in gt for r in ranked[:k])
    return 100.0 * hits / len(rankings)


def average_precision_at_k(ranked: Sequence[str], gt: Iterable[str], k: int) -> float:
    """AP@K with the CIRCO normaliser ``min(|GT|, K)`` (a fraction in [0, 1])."""
    gt = set(gt)
    if not gt:
        return float("nan")
    hits = 0
    total = 0.0
    for i, r in enumerate(ranked[:k], 1):
        if r in gt:
            hits += 1
            total += hits / i
    return total / min(len(gt), k)


def map_at_k(rankings: Sequence[Sequence[str]], targets: Sequence[Iterable[str]], k: int) -> float:
    if not rankings:
        return float("nan")
    return 100.0 * sum(average_precision_at_k(r, t, k) for r, t in zip(rankings, targets)) / len(rankings)


def retrieval_metrics(rankings: Sequence[Sequence[str]], targets: Sequence[Iterable[str]],
                      recall_ks: Sequence[int] = RECALL_KS, map_ks: Sequence[int] = MAP_KS) -> dict[str, float]:
    targets = [list(t) for t in targets]
    out = {f"recall@{k}": recall_at_k(rankings, targets, k) for k in recall_ks}
    out.update({f"map@{k}": map_at_k(rankings, targets, k) for k in map_ks})
    return out


def grouped_metrics(rankings: Sequence[Sequence[str]], targets: Sequence[Iterable[str]], groups: Sequence[str],
                    **kw) -> dict[str, dict[str, float]]:
    """Metrics per group label (e.g. edit kind), plus ``"all"``."""
    by: Mapping[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by[g].append(i)
    targets = [list(t) for t in targets]
    out = {"all": retrieval_metrics(rankings, targets, **kw)}
    for g in sorted(by):
        idx = by[g]
        out[g] = retrieval_metrics([rankings[i] for i in idx], [targets[i] for i in idx], **kw)
        out[g]["queries"] = len(idx)
    out["all"]["queries"] = len(rankings)
    return out
