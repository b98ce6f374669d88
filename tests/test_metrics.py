"""Metrics against hand-computed values, including reference removal and multi-target mAP."""
from __future__ import annotations

import math
import random

import pytest
import torch

from cirlab.eval.metrics import average_precision_at_k, grouped_metrics, map_at_k, recall_at_k, retrieval_metrics
from cirlab.index import create_index


def test_recall_hand_computed():
    rankings = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "t"]]
    targets = [["b"], ["w"], ["t", "p"]]
    assert recall_at_k(rankings, targets, 1) == pytest.approx(100 / 3)  # only query 3 (p at rank 1)
    assert recall_at_k(rankings, targets, 2) == pytest.approx(200 / 3)
    assert recall_at_k(rankings, targets, 3) == pytest.approx(200 / 3)


def test_ap_multi_target_hand_computed():
    # GT = {a, c, e}; ranking a x c y e: hits at 1, 3, 5 -> P = 1, 2/3, 3/5
    ranked = ["a", "x", "c", "y", "e"]
    assert average_precision_at_k(ranked, ["a", "c", "e"], 5) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # K smaller than |GT|: divide by K, not |GT| (CIRCO)
    assert average_precision_at_k(ranked, ["a", "c", "e"], 2) == pytest.approx(1 / 2)
    # target not retrieved
    assert average_precision_at_k(ranked, ["zz"], 5) == 0.0
    # one of two targets at rank 2 -> (1/2) / min(2, 5)
    assert average_precision_at_k(ranked, ["x", "zz"], 5) == pytest.approx(0.25)


def test_map_is_mean_of_ap_in_percent():
    rankings = [["a", "b"], ["b", "a"]]
    assert map_at_k(rankings, [["a"], ["a"]], 2) == pytest.approx(100 * (1 + 0.5) / 2)


def _naive_ap(ranked, gt, k):
    # independent transcription: precision at every relevant rank, normalised by min(|GT|, K)
    rel = [1 if r in set(gt) else 0 for r in ranked[:k]]
    precisions = [sum(rel[: i + 1]) / (i + 1) for i in range(len(rel)) if rel[i]]
    return sum(precisions) / min(len(set(gt)), k)


def test_ap_matches_naive_on_random_rankings():
    rng = random.Random(0)
    ids = [str(i) for i in range(40)]
    for _ in range(300):
        ranked = rng.sample(ids, 30)
        gt = rng.sample(ids, rng.randint(1, 8))
        for k in (5, 10, 25):
            assert average_precision_at_k(ranked, gt, k) == pytest.approx(_naive_ap(ranked, gt, k))


def test_reference_removed_before_cutting_at_k():
    # the reference is the most similar gallery image; removing it moves the target from rank 2 to rank 1
    ids = ["ref", "target", "other"]
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    index = create_index("exact", dim=2)
    index.add(ids, x)
    q = torch.tensor([[1.0, 0.1]])
    _, kept = index.search(q, 2)
    _, removed = index.search(q, 2, exclude=[["ref"]])
    assert kept[0] == ["ref", "target"]
    assert removed[0] == ["target", "other"]
    assert recall_at_k(kept, [["target"]], 1) == 0.0
    assert recall_at_k(removed, [["target"]], 1) == 100.0


def test_grouped_metrics_per_kind():
    rankings = [["t1"], ["n"], ["t3"]]
    out = grouped_metrics(rankings, [["t1"], ["t2"], ["t3"]], ["add", "add", "move"], recall_ks=(1,), map_ks=(1,))
    assert out["all"]["recall@1"] == pytest.approx(200 / 3)
    assert out["add"]["recall@1"] == 50.0 and out["add"]["queries"] == 2
    assert out["move"]["recall@1"] == 100.0


def test_metric_keys():
    m = retrieval_metrics([["a"]], [["a"]])
    assert list(m) == ["recall@1", "recall@5", "recall@10", "recall@50", "map@5", "map@10", "map@25", "map@50"]
    assert all(v == 100.0 for v in m.values())
    assert math.isnan(recall_at_k([], [], 1))
    with pytest.raises(ValueError):
        recall_at_k([["a"]], [], 1)
