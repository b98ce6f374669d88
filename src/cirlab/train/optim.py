"""Optimisers and training precision of cirlab's trainers, in one place.

``adamw`` is ``torch.optim.AdamW`` with its fused kernel (one pass over every parameter per step instead
of a dozen elementwise ops per tensor) whenever every parameter is a floating-point tensor on a device
that has it (CPU and CUDA in torch >= 2.4); otherwise the default implementation. Same update rule,
same hyper-parameters; the results agree with the per-tensor implementation up to float rounding.

``autocast(precision, device)`` is the forward pass's precision: ``"fp32"`` (exact, the default) or
``"bf16"`` (matrix products in bfloat16 under ``torch.autocast``; the weights, the optimiser and the
losses stay float32). On a CPU with AMX or AVX512-BF16 that is much faster for matmul-bound models; on
one without, slower. It is not exact: each trainer documents what it changed in its results.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..errors import CirlabError

FUSED_DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, where: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise CirlabError(f"{where}: {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def autocast(precision: str, device: torch.device | str = "cpu") -> AbstractContextManager[Any]:
    """The forward pass's precision context (``"fp32"``: none)."""
    check_precision(precision)
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=precision == "bf16")


def fusable(params: list[torch.Tensor]) -> bool:
    """Whether the fused AdamW kernel accepts ``params``."""
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


def adamw(params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], lr: float, weight_decay: float = 0.01,
          **kwargs: Any) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or parameter groups), fused when possible."""
    items = [({**g, "params": list(g["params"])} if isinstance(g, dict) else g) for g in params]
    tensors = [p for g in items for p in (g["params"] if isinstance(g, dict) else [g])]
    if fusable(tensors) and "foreach" not in kwargs:
        kwargs.setdefault("fused", True)
    return torch.optim.AdamW(items, lr=lr, weight_decay=weight_decay, **kwargs)


__all__ = ["FUSED_DEVICES", "PRECISIONS", "adamw", "autocast", "check_precision", "fusable"]
