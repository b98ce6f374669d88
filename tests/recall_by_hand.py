"""Recall@k of a method computed without the retrieval stack: the method's own queries scored against the
gallery's image features by a matrix product, the reference removed, the top k compared with the targets.
End-to-end tests compare it with what `evaluate` / `cirlab eval` report."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def recall_by_hand(method, dataset, backbone, k: int = 10) -> float:
    from cirlab.methods import QueryBatch

    trips = [t for t in dataset.triplets if t.targets]
    ids = list(dataset.gallery.ids)
    pos = {g: n for n, g in enumerate(ids)}
    with torch.no_grad():
        gallery = F.normalize(backbone.encode_images(dataset.gallery.paths).float(), dim=-1)
        refs = [pos[t.reference] for t in trips]
        batch = QueryBatch([t.caption for t in trips], gallery[refs], [dataset.gallery.path(t.reference) for t in trips],
                           [t.reference for t in trips])
        scores = F.normalize(method.compose(batch).float(), dim=-1) @ gallery.T
    scores[torch.arange(len(trips)), torch.tensor(refs)] = float("-inf")
    top = scores.topk(k, dim=1).indices.tolist()
    hits = sum(bool({ids[j] for j in row} & set(t.targets)) for row, t in zip(top, trips))
    return 100.0 * hits / len(trips)
