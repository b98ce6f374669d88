"""Method checkpoints on disk: a directory with ``config.json`` + ``model.safetensors``.

Every trained method (Combiner, Pic2Word/SEARLE/LinCIR, Fusion-Diff, PrediCIR) stores
itself the same way; this module is the one place that writes (atomically), reads and
checks such a directory, so each method only says what goes into its config.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CirlabError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
T = TypeVar("T")


def save_checkpoint(directory: str | os.PathLike[str], kind: str, config: dict[str, Any],
                    state: dict[str, torch.Tensor]) -> Path:
    """Write ``state`` (float32, safetensors) and ``{"method": kind, **config}``; each file atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(d / (WEIGHTS + ".tmp")), metadata={"format": "pt", "kind": kind})
    os.replace(d / (WEIGHTS + ".tmp"), d / WEIGHTS)
    (d / (CONFIG + ".tmp")).write_text(json.dumps({"method": kind, **config}, indent=1))
    os.replace(d / (CONFIG + ".tmp"), d / CONFIG)
    return d


def read_checkpoint(directory: str | os.PathLike[str] | None, kind: str, train_hint: str
                    ) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """``(dir, config, weights)`` of a ``kind`` checkpoint; ``train_hint`` is the command that makes one
    (``{out}`` in it becomes the directory)."""
    if not directory:
        raise CirlabError(f"method {kind!r} needs a trained checkpoint: {kind}:/path/to/dir "
                          f"(train one with `{train_hint.format(out='DIR')}`)")
    d = Path(directory).expanduser()
    cfg_p, w_p = d / CONFIG, d / WEIGHTS
    for p in (cfg_p, w_p):
        if not p.is_file():
            raise CirlabError(f"{kind}: {p} not found (a checkpoint directory holds {CONFIG} + {WEIGHTS}; "
                              f"train one with `{train_hint.format(out=d)}`)")
    try:
        cfg = json.loads(cfg_p.read_text())
    except json.JSONDecodeError as e:
        raise CirlabError(f"{cfg_p}: not valid JSON ({e})") from None
    if cfg.get("method") != kind:
        raise CirlabError(f"{cfg_p}: holds a {cfg.get('method')!r} checkpoint, not {kind!r} "
                          f"(use {cfg.get('method')}:{d})")
    return d, cfg, load_file(str(w_p))


def config_section(cfg: dict[str, Any], key: str, build: Callable[[Any], T], directory: Path) -> T:
    """``build(cfg[key])`` with an error naming the file and field when it is missing or malformed."""
    try:
        return build(cfg[key])
    except (KeyError, TypeError, ValueError) as e:
        raise CirlabError(f"{directory / CONFIG}: field {key!r} is missing or malformed ({e})") from None


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], directory: Path, prefix: str = "") -> None:
    """Load ``state`` (keys under ``prefix.`` when given) into ``module``; every key must match."""
    if prefix:
        state = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = f"{prefix} weights" if prefix else "weights"
        raise CirlabError(f"{directory / WEIGHTS}: {what} do not match {directory / CONFIG} "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def check_fingerprint(directory: Path, trained_on: str, fingerprint: str, backbone: Any) -> None:
    """A checkpoint trained on one backbone's features must not run on another's."""
    if fingerprint and fingerprint != backbone.fingerprint():
        raise CirlabError(f"{directory}: trained on {trained_on!r} with other weights than backbone "
                          f"{backbone.spec!r} (fingerprint {fingerprint} != {backbone.fingerprint()}); "
                          f"retrain it for this backbone")


__all__ = ["CONFIG", "WEIGHTS", "check_fingerprint", "config_section", "load_weights", "read_checkpoint",
           "save_checkpoint"]
