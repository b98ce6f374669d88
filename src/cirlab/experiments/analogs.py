"""How good the world's rewriter analogs are: the rewritten description against the true target scene.

``rewriter_accuracy`` rewrites every query of a world split in each of its registers (``meta.texts``:
procedural, describing, casual; a format-1 world has only its procedural caption) from a reference
description, and scores the description it writes against the query's valid target scenes (gallery
``meta.objects``): **exact** = the share of queries whose description names exactly one of the valid
target scenes (every object's shape, colour, size and place; an unstated attribute counts as wrong),
**f1** = the mean object-level F1 against the closest valid target. Both in percent.

The reference descriptions are the gallery's own captions (the rewriter alone) unless ``descriptions``
gives others, e.g. ``captioned_references`` (what the ``world`` captioner says: the pipeline IP-CIR runs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def _objects(scene_list: list) -> frozenset[tuple[Any, ...]]:
    from ..world.scene import CELLS, Scene

    return frozenset((CELLS[o.cell], o.shape, o.colour, o.size) for o in Scene.from_list(scene_list).objects)


def _said(description: str) -> frozenset[tuple[Any, ...]]:
    from ..methods.lexical import read_things

    return frozenset((t.place, t.shape, t.colour, t.size) for t in read_things(description))


def _f1(a: frozenset, b: frozenset) -> float:
    return 2 * len(a & b) / (len(a) + len(b)) if a or b else 1.0


def captioned_references(split: str | Path, captioner: Any, backbone: Any, batch_size: int = 256) -> dict[str, str]:
    """{reference id: the captioner's description of it} for every reference of the split's queries."""
    from ..data import load_dataset
    from ..methods.base import QueryBatch

    ds = load_dataset(Path(split))
    refs = list(dict.fromkeys(t.reference for t in ds.triplets if t.targets))
    path = dict(zip(ds.gallery.ids, ds.gallery.paths))
    out: dict[str, str] = {}
    for lo in range(0, len(refs), batch_size):
        ids = refs[lo:lo + batch_size]
        paths = [path[i] for i in ids]
        batch = QueryBatch([""] * len(ids), backbone.encode_images(paths), paths, ids)
        out.update(zip(ids, captioner.caption(batch)))
    return out


def rewriter_accuracy(rewriter: Any, split: str | Path, descriptions: dict[str, str] | None = None,
                      progress: bool = False) -> dict[str, dict[str, float]]:
    """{register or "all": {"queries", "exact", "f1"}} of ``rewriter`` on the queries of ``split``."""
    from ..data import load_dataset
    from ..errors import DatasetError

    ds = load_dataset(Path(split))
    meta = dict(zip(ds.gallery.ids, ds.gallery.meta))
    caps = descriptions if descriptions is not None else dict(zip(ds.gallery.ids, ds.gallery.captions))
    scores: dict[str, list[tuple[bool, float]]] = {}
    for t in tqdm([t for t in ds.triplets if t.targets], desc="rewrite", unit="query", disable=not progress):
        if any("objects" not in meta.get(x, {}) for x in t.targets):
            raise DatasetError(f"{split}: target of {t.id} has no meta.objects (not a world split)")
        valid = [_objects(meta[x]["objects"]) for x in t.targets]
        texts = t.meta.get("texts") or {"procedural": t.caption}
        for register, text in texts.items():
            said = _said(rewriter.rewrite_one(caps[t.reference], text))
            scores.setdefault(register, []).append((said in valid, max(_f1(said, v) for v in valid)))
    scores["all"] = [s for r in list(scores) for s in scores[r]]
    return {r: {"queries": len(v), "exact": round(100.0 * sum(e for e, _ in v) / len(v), 2),
                "f1": round(100.0 * sum(f for _, f in v) / len(v), 2)} for r, v in scores.items() if v}


__all__ = ["captioned_references", "rewriter_accuracy"]
