"""Fashion IQ (Wu et al., CVPR 2021): loader, one part per category.

Layout under the data root (the dataset repository's)::

    <root>/captions/cap.{dress,shirt,toptee}.{train,val,test}.json
    <root>/image_splits/split.{dress,shirt,toptee}.{train,val,test}.json
    <root>/images/<asin>.<ext>          (png, jpg, jpeg or webp; the first one found)

Each category's gallery is its ``image_splits`` list for the split. Triplet ids are
``<category>/<n>`` with ``n`` the entry's position in the caption file (prediction
files are aligned with that order). ``meta`` carries ``category``, ``index`` and both
``captions``; the triplet's own ``caption`` is the default join ``"{c1} and {c2}"``
(``templates.py`` offers the other joins).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.record import CIRDataset, CIRTriplet, Gallery
from ..errors import DatasetError
from .protocols import fashioniq_metrics
from .base import Benchmark, BenchmarkSplit, expect, field_of, read_json, scan_files
from .templates import join_captions

CATEGORIES = ("dress", "shirt", "toptee")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class FashionIQ(Benchmark):
    name = "fashioniq"
    splits = ("train", "val", "test")
    labelled_splits = ("train", "val")
    server_splits = ()
    exclude_reference = False
    headline = ["dress/recall@10", "dress/recall@50", "shirt/recall@10", "shirt/recall@50", "toptee/recall@10", "toptee/recall@50", "average/recall@10", "average/recall@50", "avg"]

    def metrics(self, split: BenchmarkSplit, rankings: Mapping[str, Sequence[str]],
                subset: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
        return fashioniq_metrics({c: ds.triplets for c, ds in split.parts.items()}, rankings)

    def layout(self) -> str:
        return ("<root>/captions/cap.<category>.<split>.json, <root>/image_splits/split.<category>.<split>.json, "
                "<root>/images/<asin>.png|jpg")

    def load(self, root: str | os.PathLike[str] | None, split: str, *, need_gallery: bool = True,
             categories: tuple[str, ...] = CATEGORIES) -> BenchmarkSplit:
        self.check_split(split)
        root_p = self.resolve_root(root)
        if not (root_p / "captions").is_dir():
            raise DatasetError(f"{root_p}: no Fashion IQ annotations (expected {self.layout()})")
        images = root_p / "images"
        present = scan_files(images)
        by_stem: dict[str, str] = {}
        for name in present:
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                best = by_stem.get(stem)
                if best is None or IMAGE_EXTENSIONS.index(ext.lower()) < IMAGE_EXTENSIONS.index(
                        os.path.splitext(best)[1].lower()):
                    by_stem[stem] = name
        parts: dict[str, CIRDataset] = {}
        for cat in categories:
            if cat not in CATEGORIES:
                raise DatasetError(f"fashioniq: unknown category {cat!r}; choose from {', '.join(CATEGORIES)}")
            parts[cat] = self._category(root_p, images, by_stem, cat, split)
        return BenchmarkSplit("fashioniq", split, root_p, parts)

    def _category(self, root: Path, images: Path, by_stem: dict[str, str], cat: str, split: str) -> CIRDataset:
        split_p = root / "image_splits" / f"split.{cat}.{split}.json"
        cap_p = root / "captions" / f"cap.{cat}.{split}.json"
        listing = read_json(split_p, "Fashion IQ image split file")
        expect(isinstance(listing, list) and all(isinstance(x, str) for x in listing), str(split_p),
               "expected a list of image names (asins)")
        paths = [images / by_stem.get(a, a + IMAGE_EXTENSIONS[0]) for a in listing]
        try:
            gallery = Gallery(list(listing), paths)
        except ValueError as e:
            raise DatasetError(f"{split_p}: {e}") from None
        entries = read_json(cap_p, "Fashion IQ captions file")
        expect(isinstance(entries, list), str(cap_p), "expected a list of query objects")
        triplets = [self._triplet(e, f"{cap_p}[{n}]", n, cat, gallery) for n, e in enumerate(entries)]
        return CIRDataset(name=f"fashioniq-{cat}-{split}", gallery=gallery, triplets=triplets, root=root,
                          meta={"benchmark": "fashioniq", "split": split, "category": cat, "entries": len(entries),
                                "captions": str(cap_p),
                                "image_split": str(split_p)})

    @staticmethod
    def _triplet(e: Any, where: str, n: int, cat: str, gallery: Gallery) -> CIRTriplet:
        ref = field_of(e, "candidate", str, where)
        caps = field_of(e, "captions", list, where)
        expect(len(caps) == 2 and all(isinstance(c, str) for c in caps), where,
               f"field 'captions' must hold two strings, got {caps!r}")
        targets: tuple[str, ...] = ()
        if "target" in e:
            targets = (field_of(e, "target", str, where),)
        for role, name in [("candidate", ref)] + [("target", t) for t in targets]:
            expect(name in gallery, where, f"{role} {name!r} is not in the {cat} image split")
        meta = {"category": cat, "index": n, "captions": list(caps)}
        return CIRTriplet(f"{cat}/{n}", ref, join_captions(caps[0], caps[1])[0], targets, meta)
