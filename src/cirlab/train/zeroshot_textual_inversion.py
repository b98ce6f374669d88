"""Zero-shot trainers for Pic2Word, SEARLE and LinCIR (``ZEROSHOT_TRAINERS``), wrapping ``train_method``.

Budgets follow ``cirlab experiment zeroshot`` (500 steps, 8192 train images, SEARLE
distilled from 1024 OTI tokens of 100 steps); ``ctx.quick`` shrinks them to seconds.
``ctx.options[name]`` (a dict) overrides ``MethodTrainConfig`` fields, with
``max_images`` for the number of train gallery entries and ``oti_steps`` for SEARLE's OTI.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..methods.textual_inversion.oti import OTIConfig
from .textual_inversion import MethodTrainConfig, TrainingData, train_method
from .zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext

FULL: dict[str, Any] = {"steps": 500, "batch_size": 256, "max_images": 8192, "oti_images": 1024, "oti_steps": 100,
                        "prompts": "world"}
QUICK: dict[str, Any] = {"steps": 20, "batch_size": 64, "max_images": 256, "oti_images": 32, "oti_steps": 5,
                         "prompts": "world"}

_DATA: dict[tuple[str, int], TrainingData] = {}  # one encoding of the train images per run, shared by the three


def _data(train: Path, max_images: int) -> TrainingData:
    key = (str(train.resolve()), max_images)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = TrainingData(train, max_images)
    return _DATA[key]


def settings(name: str, ctx: ZeroShotContext) -> dict[str, Any]:
    s = dict(QUICK if ctx.quick else FULL)
    s.update(ctx.options.get(name, {}))
    return s


def _trainer(name: str) -> Callable[[ZeroShotContext], str]:
    def train(ctx: ZeroShotContext) -> str:
        s = settings(name, ctx)
        max_images, oti_steps = int(s.pop("max_images")), int(s.pop("oti_steps"))
        cfg = MethodTrainConfig(method=name, oti=OTIConfig(steps=oti_steps, seed=ctx.seed), seed=ctx.seed, **s)
        train_method(ctx.backbone, _data(ctx.world / "train", max_images), cfg, ctx.out, progress=ctx.progress)
        return f"{name}:{ctx.out}"

    train.__name__ = f"zeroshot_{name}"
    return train


for _name, _help in (("pic2word", "Pic2Word phi trained on train/ images"),
                     ("searle", "SEARLE phi distilled from OTI tokens of train/ images"),
                     ("lincir", "LinCIR phi trained on train/ captions")):
    ZEROSHOT_TRAINERS.register(_name, help=_help)(_trainer(_name))

__all__ = ["FULL", "QUICK", "settings"]
