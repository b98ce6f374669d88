"""Pseudo-word injection through the token-embedding module of a text encoder.

Text towers that take no ``inputs_embeds`` (transformers CLIP/SigLIP, open_clip)
still embed their ids with one ``nn.Embedding``. ``TokenInjector`` hooks that
module once; while ``injector.active(where, pseudo)`` is open on a thread, the
embedding rows at ``where`` (B, L) are replaced by ``pseudo[b]`` (B, D) with
``torch.where``, so gradients flow into ``pseudo``. Other threads and calls
outside the context see the plain embeddings.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn


class _State(threading.local):
    where: torch.Tensor | None = None
    pseudo: torch.Tensor | None = None


class TokenInjector:
    def __init__(self, embedding: nn.Module) -> None:
        self.embedding = embedding
        self._state = _State()
        self._handle = embedding.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        state = self._state
        if state.where is None:
            return None
        if state.where.shape != output.shape[:2]:
            raise RuntimeError(f"placeholder mask {tuple(state.where.shape)} does not fit token embeddings "
                               f"{tuple(output.shape[:2])}")
        pseudo = state.pseudo.to(device=output.device, dtype=output.dtype)
        where = state.where.to(output.device).unsqueeze(-1)
        return torch.where(where, pseudo.unsqueeze(1).expand_as(output), output)

    @contextmanager
    def active(self, where: torch.Tensor, pseudo: torch.Tensor) -> Iterator[None]:
        state = self._state
        state.where, state.pseudo = where, pseudo
        try:
            yield
        finally:
            state.where = state.pseudo = None

    def remove(self) -> None:
        self._handle.remove()


def pick_placeholder(tokenizer: Callable[..., Any], candidates: Sequence[str]) -> tuple[str, int | None]:
    """The first candidate that a ``transformers`` tokenizer encodes as exactly one known token of its own
    when it stands between spaces, and that token's id; ``(candidates[0], None)`` when none does."""
    base = tokenizer("a photo of b", add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    for cand in candidates:
        ids = tokenizer(f"a photo of {cand} b", add_special_tokens=False)["input_ids"]
        if len(ids) != len(base) + 1 or ids[:-2] != base[:-1] or ids[-1] != base[-1]:
            continue
        new = ids[-2]
        if new != unk and new not in base:
            return cand, int(new)
    return candidates[0], None
