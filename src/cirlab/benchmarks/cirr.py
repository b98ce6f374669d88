"""CIRR (Liu et al., ICCV 2021): loader for the ``rc2`` annotation release.

Layout under the data root (the official one; the annotation folders may also sit
in a ``cirr/`` sub-directory, as in the dataset repository)::

    <root>/captions/cap.rc2.{train,val,test1}.json
    <root>/captions_ext/cap.ext.rc2.{split}.json        (optional)
    <root>/image_splits/split.rc2.{split}.json           {name: "./dev/<name>.png"}
    <root>/dev/<name>.png, <root>/test1/<name>.png, <root>/train/<k>/<name>.png

Image paths come from the split file, relative to the root (or to ``<root>/img_raw``
when the images were unpacked there). One triplet per ``pairid`` (its id, as a
string); ``meta`` carries ``members`` (the 6 ``img_set`` names, reference included),
``set_id``, ``target_soft`` and, when present, ``caption_ext``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.record import CIRDataset, CIRTriplet, Gallery
from ..errors import DatasetError
from .protocols import cirr_metrics
from .base import Benchmark, BenchmarkSplit, expect, field_of, read_json

VERSION = "rc2"
ANNOTATION_DIRS = (".", "cirr")
IMAGE_BASES = (".", "img_raw")


class CIRR(Benchmark):
    name = "cirr"
    splits = ("train", "val", "test1")
    labelled_splits = ("train", "val")
    server_splits = ("test1",)
    exclude_reference = True
    headline = ["recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1", "recall_subset@2", "recall_subset@3", "avg"]
    #: image folder of each split inside the image base
    image_folders = {"train": "train", "val": "dev", "test1": "test1"}

    def metrics(self, split: BenchmarkSplit, rankings: Mapping[str, Sequence[str]],
                subset: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
        return cirr_metrics(split.triplets, rankings, subset)

    def layout(self) -> str:
        return ("<root>/captions/cap.rc2.<split>.json, <root>/image_splits/split.rc2.<split>.json "
                "(or under <root>/cirr/), images at the paths the split file lists, relative to <root>")

    def annotation_dir(self, root: Path) -> Path:
        for sub in ANNOTATION_DIRS:
            if (root / sub / "captions").is_dir():
                return (root / sub).resolve() if sub != "." else root
        raise DatasetError(f"{root}: no CIRR annotations (expected {self.layout()})")

    def image_base(self, root: Path, split: str) -> Path:
        folder = self.image_folders[split]
        for sub in IMAGE_BASES:
            if (root / sub / folder).is_dir():
                return root / sub
        return root

    def load(self, root: str | os.PathLike[str] | None, split: str, *, need_gallery: bool = True) -> BenchmarkSplit:
        self.check_split(split)
        root_p = self.resolve_root(root)
        ann = self.annotation_dir(root_p)
        cap_p = ann / "captions" / f"cap.{VERSION}.{split}.json"
        split_p = ann / "image_splits" / f"split.{VERSION}.{split}.json"
        listing = read_json(split_p, "CIRR image split file")
        expect(isinstance(listing, dict), str(split_p), "expected an object {image name: relative path}")
        base = self.image_base(root_p, split)
        ids = [str(k) for k in listing]
        paths = [base / str(v) for v in listing.values()]
        gallery = Gallery(ids, [Path(os.path.normpath(p)) for p in paths])
        ext = self._captions_ext(ann, split)
        triplets = [self._triplet(e, f"{cap_p}[{n}]", gallery, ext, split)
                    for n, e in enumerate(self._entries(cap_p))]
        seen: dict[str, int] = {}
        for n, t in enumerate(triplets):
            expect(t.id not in seen, f"{cap_p}[{n}]", f"duplicate pairid {t.id} (first at [{seen.get(t.id)}])")
            seen[t.id] = n
        ds = CIRDataset(name=f"cirr-{split}", gallery=gallery, triplets=triplets, root=root_p,
                        meta={"benchmark": "cirr", "split": split, "captions": str(cap_p), "image_split": str(split_p)})
        return BenchmarkSplit("cirr", split, root_p, {"all": ds})

    @staticmethod
    def _entries(cap_p: Path) -> list[Any]:
        data = read_json(cap_p, "CIRR captions file")
        expect(isinstance(data, list), str(cap_p), "expected a list of query objects")
        return data

    @staticmethod
    def _captions_ext(ann: Path, split: str) -> dict[str, dict[str, str]]:
        p = ann / "captions_ext" / f"cap.ext.{VERSION}.{split}.json"
        if not p.is_file():
            return {}
        data = read_json(p, "CIRR extended captions file")
        expect(isinstance(data, list), str(p), "expected a list")
        return {str(e["pairid"]): e.get("caption_extend", {}) for e in data if isinstance(e, dict) and "pairid" in e}

    @staticmethod
    def _triplet(e: Any, where: str, gallery: Gallery, ext: dict[str, dict[str, str]], split: str) -> CIRTriplet:
        pairid = str(field_of(e, "pairid", int, where))
        ref = field_of(e, "reference", str, where)
        caption = field_of(e, "caption", str, where)
        img_set = field_of(e, "img_set", dict, where)
        members = field_of(img_set, "members", list, f"{where}.img_set")
        expect(all(isinstance(m, str) for m in members), where, f"img_set.members must be names, got {members!r}")
        targets: tuple[str, ...] = ()
        if "target_hard" in e:
            targets = (field_of(e, "target_hard", str, where),)
        for role, name in [("reference", ref)] + [("target_hard", t) for t in targets] + \
                [("img_set member", m) for m in members]:
            expect(name in gallery, where, f"{role} {name!r} is not in the {split} image split")
        meta: dict[str, Any] = {"members": list(members), "set_id": img_set.get("id")}
        if "target_soft" in e:
            meta["target_soft"] = e["target_soft"]
        if pairid in ext:
            meta["caption_ext"] = ext[pairid]
        return CIRTriplet(pairid, ref, caption, targets, meta)
