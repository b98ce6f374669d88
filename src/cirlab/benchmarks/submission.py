"""Prediction and test-server files, in exactly the servers' formats.

- CIRR: two files, ``{"version": "rc2", "metric": "recall", "<pairid>": [50 names]}``
  and ``{"version": "rc2", "metric": "recall_subset", "<pairid>": [3 names]}``.
- CIRCO: ``{"<query id>": [50 unique COCO image ids (integers)]}``.
- Fashion IQ (no server; for ``eval-predictions``): ``{"dress": [[asin, ...], ...],
  "shirt": ..., "toptee": ...}``, one list per caption-file entry, in file order.

``files(...)`` turns rankings (query id -> ranked ids, as ``run_eval`` produces
them) into these objects; ``rankings_from(...)`` reads them back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.jsonl import write_json as _write_json
from ..errors import CirlabError
from .base import BenchmarkSplit

CIRR_VERSION = "rc2"
CIRR_RECALL = "recall"
CIRR_SUBSET = "recall_subset"
CIRR_HEADER = ("version", "metric")
RANK_DEPTH = 50
SUBSET_DEPTH = 3


class DuplicateKeys(dict):
    """A dict that remembers keys seen more than once while parsing (JSON allows them; servers do not)."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
    out = DuplicateKeys()
    dups: list[str] = []
    for k, v in pairs:
        if k in out:
            dups.append(k)
        out[k] = v
    out.duplicates = dups
    return out


def load_json_file(path: Path) -> tuple[Any, list[str]]:
    """Parse a submission/prediction file; returns the object and its duplicated top-level keys."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh, object_pairs_hook=_pairs_hook)
    except FileNotFoundError:
        raise CirlabError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise CirlabError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise CirlabError(f"{path}: not UTF-8 text ({e.reason})") from None
    return obj, list(getattr(obj, "duplicates", []))


def write_json(path: Path, obj: Any) -> Path:
    return _write_json(path, obj, indent=None)


def cirr_files(rankings: Mapping[str, Sequence[str]], subset: Mapping[str, Sequence[str]] | None
               ) -> dict[str, dict[str, Any]]:
    """``{"recall": obj, "recall_subset": obj}`` (the second only when subset rankings are given)."""
    out = {CIRR_RECALL: {"version": CIRR_VERSION, "metric": CIRR_RECALL,
                         **{str(q): list(r[:RANK_DEPTH]) for q, r in rankings.items()}}}
    if subset is not None:
        out[CIRR_SUBSET] = {"version": CIRR_VERSION, "metric": CIRR_SUBSET,
                            **{str(q): list(r[:SUBSET_DEPTH]) for q, r in subset.items()}}
    return out


def circo_file(rankings: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
    return {str(q): [int(i) for i in r[:RANK_DEPTH]] for q, r in rankings.items()}


def fashioniq_file(split: BenchmarkSplit, rankings: Mapping[str, Sequence[str]]) -> dict[str, list[list[str]]]:
    """One list per caption-file entry, in file order; entries not ranked (dropped) get ``[]``."""
    out: dict[str, list[list[str]]] = {}
    for cat, ds in split.parts.items():
        rows: list[list[str]] = [[] for _ in range(int(ds.meta.get("entries", len(ds.triplets))))]
        for t in ds.triplets:
            rows[int(t.meta["index"])] = list(rankings[t.id][:RANK_DEPTH])
        out[cat] = rows
    return out


def prediction_files(split: BenchmarkSplit, rankings: Mapping[str, Sequence[str]],
                     subset: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """File-name suffix -> object for ``split``'s benchmark (``recall``/``recall_subset`` or ``predictions``)."""
    if split.benchmark == "cirr":
        return cirr_files(rankings, subset)
    if split.benchmark == "circo":
        return {"predictions": circo_file(rankings)}
    if split.benchmark == "fashioniq":
        return {"predictions": fashioniq_file(split, rankings)}
    raise CirlabError(f"no prediction format for benchmark {split.benchmark!r}")


def save_predictions(directory: Path, stem: str, split: BenchmarkSplit, rankings: Mapping[str, Sequence[str]],
                     subset: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """Write ``<directory>/<stem>.<suffix>.json`` for each prediction file of the benchmark."""
    return [write_json(Path(directory) / f"{stem}.{suffix}.json", obj)
            for suffix, obj in prediction_files(split, rankings, subset).items()]


def coco_id(x: Any) -> str:
    """A COCO image id as the gallery spells it: ``57413`` and ``"000000057413"`` are both ``"57413"``."""
    if isinstance(x, str) and x.isdigit():
        return str(int(x))
    return str(x)


def rankings_from(benchmark: str, obj: Mapping[str, Any]) -> dict[str, list[str]]:
    """Query id -> ranked ids (strings) from a (validated) prediction object (CIRCO ids normalised)."""
    if benchmark == "fashioniq":
        return {f"{cat}/{n}": [str(x) for x in row] for cat, rows in obj.items() for n, row in enumerate(rows)}
    norm = coco_id if benchmark == "circo" else str
    return {str(k): [norm(x) for x in v] for k, v in obj.items() if k not in CIRR_HEADER}
