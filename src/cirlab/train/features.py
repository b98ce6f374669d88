"""Cached features for supervised CIR training: encode a dataset's images and texts once.

``triplet_features(backbone, dataset, cache_dir)`` returns a ``FeatureTriplets``
(reference, text and target features per triplet) whose image features come from
``build_index`` over the images the triplets use (cached, resumable; reused while the
backbone weights and the images are unchanged). ``eval_features`` does the same for an
evaluation split (the whole gallery), and ``evaluate_features`` ranks it with any
``(image, text) -> query`` function, reporting the same metrics as ``cirlab eval``.

``cached_text_features`` encodes texts with a frozen backbone once across runs: the raw features
are kept in ``cache_root()/text-features`` (one safetensors file per backbone weights + tokenised
texts, written atomically), so later runs and seeds of a trainer read them instead.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..data.record import CIRDataset, CIRTriplet
from ..eval.metrics import grouped_metrics
from ..fileutil import atomic_write_bytes
from ..index import build_index


@dataclass
class FeatureTriplets:
    """Per-triplet features (all (N, D), normalised) and an id per target image (for false-negative masks)."""

    reference: torch.Tensor
    text: torch.Tensor
    target: torch.Tensor
    target_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.reference)

    def subset(self, rows: Sequence[int] | torch.Tensor) -> "FeatureTriplets":
        r = torch.as_tensor(rows, dtype=torch.long)
        return FeatureTriplets(self.reference[r], self.text[r], self.target[r], self.target_ids[r])


def _digest(items: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:12]


def image_features(backbone: Backbone, dataset: CIRDataset, ids: Sequence[str], cache_dir: str | os.PathLike[str],
                   progress: bool = True) -> dict[str, torch.Tensor]:
    """Features of the gallery images ``ids`` (encoded once under ``cache_dir``)."""
    uniq = sorted(set(ids))
    sub = dataset.gallery.subset(uniq)
    d = Path(cache_dir) / f"images-{_digest([str(p) for p in sub.paths])}"
    index = build_index(backbone, sub, d, progress=progress)
    vecs = index.vectors(uniq)
    return dict(zip(uniq, vecs))


TEXT_CACHE = "text-features"


def text_cache_dir() -> Path | None:
    """Where ``cached_text_features`` keeps its files; None when the feature cache is switched off."""
    from ..backbones.encoding import FEATURE_CACHE_ENV
    from ..paths import cache_root

    return None if os.environ.get(FEATURE_CACHE_ENV) == "off" else cache_root() / TEXT_CACHE


def _texts_key(backbone: Backbone, texts: Sequence[str], chunk: int = 4096) -> str:
    """The weights' fingerprint and the token ids of ``texts`` (the tokenizer is part of what is cached)."""
    h = hashlib.sha256(f"{type(backbone).__name__}|{backbone.fingerprint()}|{len(texts)}".encode())
    for lo in range(0, len(texts), chunk):
        for k, v in sorted(backbone.tokenize(list(texts[lo:lo + chunk])).items()):
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(v.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def cached_text_features(backbone: Backbone, texts: Sequence[str], normalize: bool = True, progress: bool = False,
                         cache_dir: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """``backbone.encode_texts(texts, normalize=...)``, read from the text-feature cache when this backbone's
    weights already encoded these token ids (``cache_dir``: default ``text_cache_dir()``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    root = Path(cache_dir) if cache_dir is not None else text_cache_dir()
    raw = None
    if root is not None:
        path = root / f"{_texts_key(backbone, texts)}.safetensors"
        if path.is_file():
            try:
                raw = load_file(str(path)).get("raw")
            except (SafetensorError, OSError):  # a damaged cache file is encoded again and replaced
                raw = None
            if raw is not None and tuple(raw.shape) != (len(texts), backbone.embed_dim):
                raw = None
    if raw is None:
        raw = backbone.encode_texts(list(texts), progress=progress, normalize=False)
        if root is not None:
            atomic_write_bytes(path, save({"raw": raw.contiguous()}))
    return F.normalize(raw, dim=-1) if normalize else raw


def text_features(backbone: Backbone, texts: Sequence[str]) -> torch.Tensor:
    uniq = sorted(set(texts))
    feats = backbone.encode_texts(uniq)
    pos = {t: n for n, t in enumerate(uniq)}
    return feats[[pos[t] for t in texts]] if texts else feats


def triplet_features(backbone: Backbone, dataset: CIRDataset, cache_dir: str | os.PathLike[str],
                     triplets: Sequence[CIRTriplet] | None = None, progress: bool = True) -> FeatureTriplets:
    """Features of ``triplets`` (default: all of ``dataset``'s triplets with a target); target = the first one."""
    trips = [t for t in (triplets if triplets is not None else dataset.triplets) if t.targets]
    if not trips:
        raise ValueError(f"dataset {dataset.name!r}: no triplets with a target to train on")
    feats = image_features(backbone, dataset, [t.reference for t in trips] + [t.targets[0] for t in trips],
                           cache_dir, progress)
    target_names = sorted({t.targets[0] for t in trips})
    tid = {n: i for i, n in enumerate(target_names)}
    return FeatureTriplets(torch.stack([feats[t.reference] for t in trips]),
                           text_features(backbone, [t.caption for t in trips]),
                           torch.stack([feats[t.targets[0]] for t in trips]),
                           torch.tensor([tid[t.targets[0]] for t in trips]))


@dataclass
class EvalFeatures:
    """An evaluation split as features: queries (reference + text) against the whole gallery."""

    reference: torch.Tensor
    text: torch.Tensor
    gallery: torch.Tensor
    gallery_ids: list[str]
    reference_ids: list[str]
    targets: list[list[str]]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.reference)


def eval_features(backbone: Backbone, dataset: CIRDataset, cache_dir: str | os.PathLike[str],
                  progress: bool = True) -> EvalFeatures:
    trips = [t for t in dataset.triplets if t.targets]
    d = Path(cache_dir) / f"gallery-{_digest([str(p) for p in dataset.gallery.paths])}"
    index = build_index(backbone, dataset.gallery, d, progress=progress)
    gids = list(dataset.gallery.ids)
    gallery = index.vectors(gids)
    pos = {g: n for n, g in enumerate(gids)}
    return EvalFeatures(gallery[[pos[t.reference] for t in trips]], text_features(backbone, [t.caption for t in trips]),
                        gallery, gids, [t.reference for t in trips], [list(t.targets) for t in trips],
                        [str(t.meta.get("kind", "all")) for t in trips])


Composer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate_features(compose: Composer, ev: EvalFeatures, depth: int = 50, batch_size: int = 1024,
                      exclude_reference: bool = True) -> dict[str, dict[str, float]]:
    """Metrics per edit kind (and ``all``) of the queries ``compose(reference, text)`` on ``ev``'s gallery."""
    gal = F.normalize(ev.gallery.float(), dim=-1)
    gpos = {g: n for n, g in enumerate(ev.gallery_ids)}
    rankings: list[list[str]] = []
    for lo in range(0, len(ev), batch_size):
        q = F.normalize(compose(ev.reference[lo:lo + batch_size], ev.text[lo:lo + batch_size]).float(), dim=-1)
        s = q @ gal.T
        if exclude_reference:  # references that are not gallery images have nothing to exclude
            pairs = [(n, gpos[r]) for n, r in enumerate(ev.reference_ids[lo:lo + batch_size]) if r in gpos]
            if pairs:
                rows, cols = zip(*pairs)
                s[list(rows), list(cols)] = float("-inf")
        top = s.topk(min(depth, s.shape[1]), dim=1).indices
        rankings += [[ev.gallery_ids[j] for j in row] for row in top.tolist()]
    return grouped_metrics(rankings, ev.targets, ev.kinds)


__all__ = ["EvalFeatures", "FeatureTriplets", "cached_text_features", "eval_features", "evaluate_features", "image_features",
           "text_cache_dir", "text_features", "triplet_features"]
