"""The records every loader produces: a gallery listing and CIR triplets."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class CIRTriplet:
    """One composed query: a reference image id, a modification text, and its valid targets.

    ``targets`` lists every correct gallery id (one for CIRR/FashionIQ, several for
    CIRCO-style queries); it is empty when the split has no public ground truth.
    ``meta`` carries benchmark-specific extras (edit kind, CIRR set members, ...).
    """

    id: str
    reference: str
    caption: str
    targets: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "reference": self.reference,
            "caption": self.caption,
            "targets": list(self.targets),
        }
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass
class Gallery:
    """An ordered list of images: ids, file paths, and optional captions."""

    ids: list[str]
    paths: list[Path]
    captions: list[str | None] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.ids):
            raise ValueError("gallery ids and paths differ in length")
        if not self.captions:
            self.captions = [None] * len(self.ids)
        if not self.meta:
            self.meta = [{} for _ in self.ids]
        self._pos = {i: n for n, i in enumerate(self.ids)}
        if len(self._pos) != len(self.ids):
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ValueError(f"gallery id {dup!r} appears more than once")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._pos

    def position(self, image_id: str) -> int:
        return self._pos[image_id]

    def path(self, image_id: str) -> Path:
        return self.paths[self._pos[image_id]]

    def subset(self, ids: Iterable[str]) -> "Gallery":
        keep = list(ids)
        pos = [self._pos[i] for i in keep]
        return Gallery(keep, [self.paths[p] for p in pos], [self.captions[p] for p in pos], [self.meta[p] for p in pos])

    def missing_files(self) -> list[str]:
        return [i for i, p in zip(self.ids, self.paths) if not p.is_file()]


@dataclass
class CIRDataset:
    """A gallery plus the triplets that query it."""

    name: str
    gallery: Gallery
    triplets: list[CIRTriplet]
    root: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.triplets)

    def kinds(self) -> Sequence[str]:
        return sorted({str(t.meta.get("kind", "all")) for t in self.triplets})
