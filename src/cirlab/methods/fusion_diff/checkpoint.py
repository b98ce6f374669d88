"""Fusion-Diff checkpoints: a directory with ``model.safetensors`` + ``config.json``.

The weights are prefixed ``prior.``, ``fusion.`` and ``adapter.``; a stage-1
checkpoint holds the prior only (``fusion`` and ``adapter`` are null in the config).
The config also records the scheduler, the default sampling settings, the backbone
spec and weight fingerprint, and the training logs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...backbones.base import Backbone
from ...checkpoint import check_fingerprint, config_section, load_weights, read_checkpoint, save_checkpoint
from ...errors import CirlabError
from .adapter import AdapterConfig, ControlAdapter
from .fusion import FusionConfig, FusionModule
from .pipeline import FusionDiffPipeline, SamplingConfig
from .prior import EmbeddingPrior, PriorConfig
from .scheduler import DDIMConfig, DDIMScheduler

KIND = "fusion-diff"


@dataclass
class FusionDiffCheckpoint:
    pipeline: FusionDiffPipeline
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backbone: str = ""
    fingerprint: str = ""
    training: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        p = self.pipeline
        return {"method": KIND, "prior": p.prior.cfg.to_dict(), "scheduler": p.scheduler.cfg.to_dict(),
                "fusion": p.fusion.cfg.to_dict() if p.fusion is not None else None,
                "adapter": p.adapter.cfg.to_dict() if p.adapter is not None else None,
                "sampling": self.sampling.to_dict(), "backbone": self.backbone, "fingerprint": self.fingerprint,
                "training": self.training}

    def save(self, directory: str | os.PathLike[str]) -> Path:
        state: dict[str, torch.Tensor] = {}
        for prefix, module in (("prior", self.pipeline.prior), ("fusion", self.pipeline.fusion),
                               ("adapter", self.pipeline.adapter)):
            if module is not None:
                state.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
        config = {k: v for k, v in self.config().items() if k != "method"}
        return save_checkpoint(directory, KIND, config, state)


def _section(cfg: dict[str, Any], key: str, cls: type, directory: Path) -> Any:
    return config_section(cfg, key, lambda c: cls(**c), directory)


def load_fusion_diff(directory: str | os.PathLike[str] | None, backbone: Backbone | None = None
                     ) -> FusionDiffCheckpoint:
    """Read a checkpoint written by ``cirlab train fusion-diff[-prior]``; check it fits ``backbone``."""
    d, cfg, state = read_checkpoint(directory, KIND, "cirlab train fusion-diff --data WORLD/train --out {out}")
    prior = EmbeddingPrior(_section(cfg, "prior", PriorConfig, d))
    scheduler = DDIMScheduler(_section(cfg, "scheduler", DDIMConfig, d))
    fusion = FusionModule(_section(cfg, "fusion", FusionConfig, d)) if cfg.get("fusion") else None
    adapter = ControlAdapter(_section(cfg, "adapter", AdapterConfig, d)) if cfg.get("adapter") else None
    sampling = _section(cfg, "sampling", SamplingConfig, d) if "sampling" in cfg else SamplingConfig()
    for prefix, module in (("prior", prior), ("fusion", fusion), ("adapter", adapter)):
        if module is not None:
            load_weights(module, state, d, prefix)
    pipe = FusionDiffPipeline(prior, scheduler, adapter, fusion).eval()
    ck = FusionDiffCheckpoint(pipe, sampling, cfg.get("backbone", ""), cfg.get("fingerprint", ""),
                              cfg.get("training", {}))
    if backbone is not None:
        if prior.cfg.dim != backbone.embed_dim:
            raise CirlabError(f"{d}: fusion-diff dim {prior.cfg.dim} != embed_dim {backbone.embed_dim} of backbone "
                              f"{backbone.spec!r} (trained on {ck.backbone!r})")
        check_fingerprint(d, ck.backbone, ck.fingerprint, backbone)
    return ck


__all__ = ["KIND", "FusionDiffCheckpoint", "load_fusion_diff"]
