"""CIRCO (Baldrati et al., ICCV 2023): loader; the gallery is COCO 2017 unlabeled.

Layout under the data root (what the official evaluation code reads)::

    <root>/annotations/{val,test}.json
    <root>/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   (COCO's listing)
    <root>/COCO2017_unlabeled/unlabeled2017/<file_name>

The gallery is every ``images[]`` entry of COCO's listing (id -> ``file_name``), ids
as strings. Triplet ids are the query ``id`` (as a string); ``targets`` holds all
``gt_img_ids``; ``meta`` carries ``target`` (``target_img_id``), ``semantic_aspects``
and ``shared_concept``. The test split has no ground truth (empty ``targets``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.record import CIRDataset, CIRTriplet, Gallery
from ..errors import DatasetError
from .protocols import circo_metrics
from .base import Benchmark, BenchmarkSplit, expect, field_of, read_json

COCO_DIR = "COCO2017_unlabeled"
LISTING = Path(COCO_DIR) / "annotations" / "image_info_unlabeled2017.json"
IMAGES = Path(COCO_DIR) / "unlabeled2017"


class CIRCO(Benchmark):
    name = "circo"
    splits = ("val", "test")
    labelled_splits = ("val",)
    server_splits = ("test",)
    exclude_reference = False
    headline = ["map@5", "map@10", "map@25", "map@50", "recall@5", "recall@10", "recall@25", "recall@50"]

    def metrics(self, split: BenchmarkSplit, rankings: Mapping[str, Sequence[str]],
                subset: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
        return circo_metrics(split.triplets, rankings)

    def layout(self) -> str:
        return (f"<root>/annotations/<split>.json, <root>/{LISTING.as_posix()}, "
                f"<root>/{IMAGES.as_posix()}/<file_name>")

    def load(self, root: str | os.PathLike[str] | None, split: str, *, need_gallery: bool = True) -> BenchmarkSplit:
        """With ``need_gallery=False`` a missing COCO listing is tolerated (``has_gallery`` is then False)."""
        self.check_split(split)
        root_p = self.resolve_root(root)
        ann_p = root_p / "annotations" / f"{split}.json"
        if not (root_p / "annotations").is_dir():
            raise DatasetError(f"{root_p}: no CIRCO annotations (expected {self.layout()})")
        listing_p = root_p / LISTING
        notes: list[str] = []
        if listing_p.is_file():
            gallery = self._gallery(root_p, listing_p)
        elif need_gallery:
            raise DatasetError(f"{listing_p}: COCO 2017 unlabeled listing not found; the CIRCO gallery is read from "
                               f"it (expected {self.layout()})")
        else:
            gallery = Gallery([], [])
            notes.append(f"{listing_p} not found: gallery ids are not checked")
        entries = read_json(ann_p, "CIRCO annotation file")
        expect(isinstance(entries, list), str(ann_p), "expected a list of query objects")
        triplets = [self._triplet(e, f"{ann_p}[{n}]", gallery if len(gallery) else None)
                    for n, e in enumerate(entries)]
        seen: set[str] = set()
        for n, t in enumerate(triplets):
            expect(t.id not in seen, f"{ann_p}[{n}]", f"duplicate query id {t.id}")
            seen.add(t.id)
        ds = CIRDataset(name=f"circo-{split}", gallery=gallery, triplets=triplets, root=root_p,
                        meta={"benchmark": "circo", "split": split, "annotations": str(ann_p),
                              "listing": str(listing_p)})
        return BenchmarkSplit("circo", split, root_p, {"all": ds}, has_gallery=bool(len(gallery)), notes=notes)

    @staticmethod
    def _gallery(root: Path, listing_p: Path) -> Gallery:
        data = read_json(listing_p, "COCO listing")
        images = field_of(data, "images", list, str(listing_p))
        ids: list[str] = []
        paths: list[Path] = []
        for n, im in enumerate(images):
            where = f"{listing_p}: images[{n}]"
            ids.append(str(field_of(im, "id", int, where)))
            paths.append(root / IMAGES / field_of(im, "file_name", str, where))
        try:
            return Gallery(ids, paths)
        except ValueError as e:
            raise DatasetError(f"{listing_p}: {e}") from None

    @staticmethod
    def _triplet(e: Any, where: str, gallery: Gallery | None) -> CIRTriplet:
        qid = str(field_of(e, "id", int, where))
        ref = str(field_of(e, "reference_img_id", int, where))
        caption = field_of(e, "relative_caption", str, where)
        meta: dict[str, Any] = {"shared_concept": e.get("shared_concept")}
        targets: tuple[str, ...] = ()
        if "gt_img_ids" in e:
            gt = field_of(e, "gt_img_ids", list, where)
            expect(all(isinstance(g, int) for g in gt) and gt, where, f"gt_img_ids must be image ids, got {gt!r}")
            targets = tuple(str(g) for g in gt)
            target = str(field_of(e, "target_img_id", int, where))
            expect(target == targets[0], where, f"target_img_id {target} is not the first of gt_img_ids {gt}")
            meta["target"] = target
            meta["semantic_aspects"] = list(e.get("semantic_aspects", []))
        if gallery is not None:
            for role, name in [("reference_img_id", ref)] + [("gt_img_ids member", t) for t in targets]:
                expect(name in gallery, where, f"{role} {name} is not in the COCO 2017 unlabeled listing")
        return CIRTriplet(qid, ref, caption, targets, meta)
