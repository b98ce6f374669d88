"""Which images of a benchmark split are missing on disk, and what evaluation can do about it.

A query is *complete* when every image it needs is on disk: its reference, its
targets, and (CIRR) its set members. ``drop_incomplete`` keeps the gallery images
that exist and the complete queries; results then carry a loud note, because the
numbers are no longer comparable with published ones.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data.record import CIRDataset, CIRTriplet
from .base import BenchmarkSplit


def existing(paths: Sequence[Path]) -> list[bool]:
    """Whether each path is a file, reading every parent directory once (fast on 100k-image galleries)."""
    by_dir: dict[Path, set[str]] = {}
    for p in paths:
        d = p.parent
        if d not in by_dir:
            try:
                with os.scandir(d) as it:
                    by_dir[d] = {e.name for e in it if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                by_dir[d] = set()
    return [p.name in by_dir[p.parent] for p in paths]


def needed_images(t: CIRTriplet) -> list[str]:
    return list(dict.fromkeys([t.reference, *t.targets, *t.meta.get("members", [])]))


@dataclass
class PartReport:
    part: str
    gallery: int
    queries: int
    missing_gallery: list[str] = field(default_factory=list)
    #: queries whose reference image is missing
    missing_reference: list[str] = field(default_factory=list)
    #: queries that cannot be evaluated exactly (reference, a target or a set member missing)
    incomplete: list[str] = field(default_factory=list)

    def to_json(self, limit: int | None = None) -> dict[str, Any]:
        cut = (lambda xs: xs) if limit is None else (lambda xs: xs[:limit])
        return {"gallery": self.gallery, "queries": self.queries,
                "missing_gallery_images": len(self.missing_gallery), "missing_query_images": len(self.missing_reference),
                "incomplete_queries": len(self.incomplete), "missing_gallery_list": cut(self.missing_gallery),
                "missing_query_list": cut(self.missing_reference), "incomplete_query_list": cut(self.incomplete)}


@dataclass
class DataReport:
    benchmark: str
    split: str
    root: str
    parts: dict[str, PartReport]

    @property
    def complete(self) -> bool:
        return all(not r.missing_gallery and not r.incomplete for r in self.parts.values())

    @property
    def usable_queries(self) -> int:
        return sum(r.queries - len(r.incomplete) for r in self.parts.values())

    def verdict(self) -> str:
        if self.complete:
            return "yes: every gallery and query image is present"
        total = sum(r.queries for r in self.parts.values())
        if self.usable_queries == 0:
            return "no: no query has all its images"
        dropped = total - self.usable_queries
        missing = sum(len(r.missing_gallery) for r in self.parts.values())
        return (f"only with --drop-incomplete: {dropped} of {total} queries and {missing} gallery images would be "
                f"dropped (results not comparable with published numbers)")

    def to_json(self, limit: int | None = None) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "split": self.split, "root": self.root, "complete": self.complete,
                "can_evaluate": self.verdict(), "usable_queries": self.usable_queries,
                "parts": {k: r.to_json(limit) for k, r in self.parts.items()}}


def check_split(split: BenchmarkSplit) -> DataReport:
    parts: dict[str, PartReport] = {}
    for name, ds in split.parts.items():
        ok = dict(zip(ds.gallery.ids, existing(ds.gallery.paths)))
        rep = PartReport(name, len(ds.gallery), len(ds.triplets), [i for i, v in ok.items() if not v])
        for t in ds.triplets:
            if not ok.get(t.reference, False):
                rep.missing_reference.append(t.id)
            if not all(ok.get(i, False) for i in needed_images(t)):
                rep.incomplete.append(t.id)
        parts[name] = rep
    return DataReport(split.benchmark, split.split, str(split.root), parts)


def drop_incomplete(split: BenchmarkSplit, report: DataReport) -> tuple[BenchmarkSplit, str]:
    """The split restricted to present gallery images and complete queries, and the note to record."""
    parts: dict[str, CIRDataset] = {}
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for name, ds in split.parts.items():
        rep = report.parts[name]
        gone = set(rep.missing_gallery)
        bad = set(rep.incomplete)
        gallery = ds.gallery.subset([i for i in ds.gallery.ids if i not in gone])
        trips = [t for t in ds.triplets if t.id not in bad]
        parts[name] = CIRDataset(ds.name, gallery, trips, ds.root, {**ds.meta, "dropped_queries": len(bad),
                                                                     "dropped_gallery": len(gone)})
        counts[name] = [len(bad), len(ds.triplets), len(gone), len(ds.gallery)]
    detail = "; ".join(f"{n}: {c[0]}/{c[1]} queries, {c[2]}/{c[3]} gallery images" for n, c in counts.items())
    note = ("INCOMPLETE DATA: --drop-incomplete removed " + detail +
            ". These numbers are NOT comparable with published results.")
    out = BenchmarkSplit(split.benchmark, split.split, split.root, parts, split.has_gallery, [*split.notes, note])
    return out, note
