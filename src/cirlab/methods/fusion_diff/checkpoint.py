"""Fusion-Diff checkpoints: a directory with ``model.safetensors`` + ``config.json``.

The weights are prefixed ``prior.``, ``fusion.`` and ``adapter.``; a stage-1
checkpoint holds the prior only (``fusion`` and ``adapter`` are null in the config).
The config also records the scheduler, the default sampling settings, the backbone
spec and weight fingerprint, and the training logs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ...backbones.base import Backbone
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
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state: dict[str, torch.Tensor] = {}
        for prefix, module in (("prior", self.pipeline.prior), ("fusion", self.pipeline.fusion),
                               ("adapter", self.pipeline.adapter)):
            if module is not None:
                state.update({f"{prefix}.{k}": v.detach().float().cpu().contiguous()
                              for k, v in module.state_dict().items()})
        save_file(state, str(d / "model.safetensors.tmp"), metadata={"format": "pt", "kind": KIND})
        os.replace(d / "model.safetensors.tmp", d / "model.safetensors")
        (d / "config.json.tmp").write_text(json.dumps(self.config(), indent=1))
        os.replace(d / "config.json.tmp", d / "config.json")
        return d


def _section(cfg: dict[str, Any], key: str, cls: type, where: Path) -> Any:
    try:
        return cls(**cfg[key])
    except (KeyError, TypeError) as e:
        raise CirlabError(f"{where}: field {key!r} is missing or malformed ({e})") from None


def load_fusion_diff(directory: str | os.PathLike[str] | None, backbone: Backbone | None = None
                     ) -> FusionDiffCheckpoint:
    """Read a checkpoint written by ``cirlab train fusion-diff[-prior]``; check it fits ``backbone``."""
    if not directory:
        raise CirlabError("fusion-diff needs a trained checkpoint: fusion-diff:/path/to/dir (train one with "
                          "`cirlab train fusion-diff --data WORLD/train --out DIR`)")
    d = Path(directory).expanduser()
    cfg_p, w_p = d / "config.json", d / "model.safetensors"
    for p in (cfg_p, w_p):
        if not p.is_file():
            raise CirlabError(f"fusion-diff: {p} not found (a checkpoint directory holds config.json + "
                              f"model.safetensors; train one with `cirlab train fusion-diff --out {d}`)")
    try:
        cfg = json.loads(cfg_p.read_text())
    except json.JSONDecodeError as e:
        raise CirlabError(f"{cfg_p}: not valid JSON ({e})") from None
    if cfg.get("method") != KIND:
        raise CirlabError(f"{cfg_p}: holds a {cfg.get('method')!r} checkpoint, not {KIND}")
    prior = EmbeddingPrior(_section(cfg, "prior", PriorConfig, cfg_p))
    scheduler = DDIMScheduler(_section(cfg, "scheduler", DDIMConfig, cfg_p))
    fusion = FusionModule(_section(cfg, "fusion", FusionConfig, cfg_p)) if cfg.get("fusion") else None
    adapter = ControlAdapter(_section(cfg, "adapter", AdapterConfig, cfg_p)) if cfg.get("adapter") else None
    sampling = _section(cfg, "sampling", SamplingConfig, cfg_p) if "sampling" in cfg else SamplingConfig()
    state = load_file(str(w_p))
    for prefix, module in (("prior", prior), ("fusion", fusion), ("adapter", adapter)):
        if module is None:
            continue
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        missing, unexpected = module.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise CirlabError(f"{w_p}: {prefix} weights do not match {cfg_p} (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    pipe = FusionDiffPipeline(prior, scheduler, adapter, fusion).eval()
    ck = FusionDiffCheckpoint(pipe, sampling, cfg.get("backbone", ""), cfg.get("fingerprint", ""),
                              cfg.get("training", {}))
    if backbone is not None:
        if prior.cfg.dim != backbone.embed_dim:
            raise CirlabError(f"{d}: fusion-diff dim {prior.cfg.dim} != embed_dim {backbone.embed_dim} of backbone "
                              f"{backbone.spec!r} (trained on {ck.backbone!r})")
        if ck.fingerprint and ck.fingerprint != backbone.fingerprint():
            raise CirlabError(f"{d}: trained on features of {ck.backbone!r} with other weights than backbone "
                              f"{backbone.spec!r}; retrain it for this backbone")
    return ck


__all__ = ["KIND", "FusionDiffCheckpoint", "load_fusion_diff"]
