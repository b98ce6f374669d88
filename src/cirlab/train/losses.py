"""Contrastive losses for supervised CIR, with FRA (an additive angular margin on the positives).

Query ``i`` is paired with target ``i``; every other target in the batch is a
negative. The logits are ``scale * cos`` with ``cos = q @ t.T`` (both L2-normalised).
**FRA** (fine-grained retrieval alignment, DAIG) adds an angular margin ``phi`` to
the matching pairs only: the diagonal becomes ``cos(theta + phi)`` with
``theta = arccos(cos)``, the off-diagonal entries stay ``cos(theta)``; a positive
must then beat every negative by an angle ``phi``. ``theta + phi`` is capped at pi
so the positive's logit stays monotone in theta.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-6


def margin_cosines(cos: torch.Tensor, margin: float) -> torch.Tensor:
    """``cos`` (Q, T) with ``cos(theta + margin)`` on the diagonal and ``cos(theta)`` elsewhere."""
    if margin == 0:
        return cos
    n = min(cos.shape)
    idx = torch.arange(n, device=cos.device)
    diag = cos[idx, idx].clamp(-1 + EPS, 1 - EPS)
    theta = torch.acos(diag)
    shifted = torch.cos(torch.clamp(theta + margin, max=math.pi))
    out = cos.clone()
    out[idx, idx] = shifted
    return out


def contrastive_logits(queries: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor | float,
                       margin: float = 0.0) -> torch.Tensor:
    """(Q, T) logits ``scale * cos`` (FRA margin on the diagonal when ``margin > 0``)."""
    cos = F.normalize(queries, dim=-1) @ F.normalize(targets, dim=-1).T
    return scale * margin_cosines(cos, margin)


def contrastive_loss(queries: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor | float,
                     margin: float = 0.0, target_ids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of each query against the batch's targets (the diagonal is the positive).

    ``target_ids``: an id per row; an off-diagonal target with the same id as the row's
    own target is the same image, so it is removed from the negatives (not a false negative).
    """
    logits = contrastive_logits(queries, targets, scale, margin)
    if target_ids is not None:
        ids = torch.as_tensor(target_ids, device=logits.device)
        same = ids[:, None] == ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(queries), device=logits.device)
    return F.cross_entropy(logits, labels)


__all__ = ["contrastive_logits", "contrastive_loss", "margin_cosines"]
