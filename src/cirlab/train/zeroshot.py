"""Registry of zero-shot trainers, used by world comparisons (``cirlab experiment generative``).

A zero-shot trainer fits one method on the world's *train* split without its
triplets (images, captions, or synthetic triplets it makes itself) and returns
the method spec to evaluate, e.g. ``"fusion-diff:OUT/fusion-diff"``. Methods
that need no training are plain specs in the comparison and have no trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..backbones.base import Backbone
from ..registry import Registry


@dataclass
class ZeroShotContext:
    """What every trainer gets: the frozen backbone, the world root, where to write, and the budget."""

    backbone: Backbone
    world: Path  # a world root: train/ (and test/, which trainers must not read)
    out: Path  # this trainer's own directory (created by the caller)
    seed: int = 0
    quick: bool = False  # a small budget for smoke runs and tests
    progress: bool = True
    #: specs of methods trained earlier in the same run, by trainer name (e.g. CIG reuses "searle")
    trained: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


ZeroShotTrainer = Callable[[ZeroShotContext], str]

ZEROSHOT_TRAINERS: Registry[str] = Registry("zero-shot trainer")

__all__ = ["ZEROSHOT_TRAINERS", "ZeroShotContext", "ZeroShotTrainer"]
