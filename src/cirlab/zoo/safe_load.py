"""Reading the authors' released ``.pt`` checkpoints without executing them.

Official checkpoints are pickles. ``torch.load(..., weights_only=True)`` unpickles only tensors
and plain containers; a file that needs anything else (arbitrary classes, functions) is refused
with an error naming it, never executed.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import CirlabError


def load_weights_only(path: str | os.PathLike[str]) -> Any:
    """The object stored in ``path``, unpickled with ``weights_only=True``; refuses anything else."""
    p = Path(path)
    if not p.is_file():
        raise CirlabError(f"{p}: no such checkpoint file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CirlabError(f"{p}: refused: this pickle is not weights-only (it needs full unpickling, which can "
                          f"run code: {first}); cirlab reads checkpoints only with torch.load(weights_only=True)"
                          ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CirlabError(f"{p}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def state_dict_at(obj: Any, key: str | None, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """``obj[key]`` (or ``obj``) as a flat name -> tensor dict, with a DataParallel ``module.`` prefix removed."""
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            have = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
            raise CirlabError(f"{path}: expected a dict with key {key!r} (the official layout); found {have}")
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CirlabError(f"{path}: {key or 'the file'} is not a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def take(state: dict[str, torch.Tensor], mapping: dict[str, str], path: str | os.PathLike[str],
         what: str) -> dict[str, torch.Tensor]:
    """Rename ``state`` by ``mapping`` (official prefix -> cirlab prefix); every key must be mapped."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        prefix = next((src for src in mapping if k == src or k.startswith(src + ".")), None)
        if prefix is None:
            raise CirlabError(f"{path}: unexpected {what} key {k!r} (known prefixes: {', '.join(mapping)})")
        out[mapping[prefix] + k[len(prefix):]] = v.detach().float().contiguous()
    return out


__all__ = ["load_weights_only", "state_dict_at", "take"]
