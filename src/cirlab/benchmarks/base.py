"""What every standard benchmark shares: a loaded split, data roots, problem reports.

A benchmark split is one or more *parts*, each a ``CIRDataset`` ranked over its own
gallery: CIRR and CIRCO have a single part (``"all"``); Fashion IQ has one part per
category (``dress``, ``shirt``, ``toptee``), each with that category's gallery.
"""
from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.record import CIRDataset, CIRTriplet
from ..errors import CirlabError, DatasetError


@dataclass
class BenchmarkSplit:
    """A loaded benchmark split: its parts (each a dataset with its own gallery) and where it came from."""

    benchmark: str
    split: str
    root: Path
    parts: dict[str, CIRDataset]
    #: False when the gallery listing was not available (CIRCO without the COCO listing)
    has_gallery: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def triplets(self) -> list[CIRTriplet]:
        return [t for ds in self.parts.values() for t in ds.triplets]

    def triplet_map(self) -> dict[str, CIRTriplet]:
        return {t.id: t for t in self.triplets}

    def gallery_size(self) -> int:
        return sum(len(ds.gallery) for ds in self.parts.values())

    def has_ground_truth(self) -> bool:
        return any(t.targets for t in self.triplets)


@dataclass
class Problems:
    """Errors (the file is wrong) and warnings (suspicious but accepted), in the order found."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, msg: str) -> None:
        self.errors.append(msg)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def extend(self, other: "Problems") -> None:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_errors(self, what: str) -> None:
        if self.errors:
            shown = "\n  ".join(self.errors[:20])
            more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
            raise CirlabError(f"{what}: {len(self.errors)} problem(s):\n  {shown}{more}")


class Benchmark(abc.ABC):
    """A standard benchmark: where its files live, how to load a split, its protocol."""

    name: str = ""
    splits: tuple[str, ...] = ()
    #: splits the public files give ground truth for
    labelled_splits: tuple[str, ...] = ()
    #: splits a test server scores (``cirlab submit``)
    server_splits: tuple[str, ...] = ()
    #: whether the protocol removes the query's reference image from its ranking
    exclude_reference: bool = False
    #: metric keys shown in the CLI table (the JSON has them all)
    headline: list[str] = []

    @property
    def env_var(self) -> str:
        return f"CIRLAB_{self.name.upper()}_ROOT"

    def resolve_root(self, root: str | os.PathLike[str] | None) -> Path:
        """``--data-root`` if given, else ``$CIRLAB_<NAME>_ROOT``; never a built-in path."""
        if root is None:
            env = os.environ.get(self.env_var)
            if not env:
                raise CirlabError(f"{self.name}: no data root; pass --data-root DIR or set {self.env_var}")
            root = env
        p = Path(root).expanduser()
        if not p.is_dir():
            raise CirlabError(f"{self.name}: data root {p} is not a directory")
        return p

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise CirlabError(f"{self.name}: unknown split {split!r}; choose from {', '.join(self.splits)}")

    @abc.abstractmethod
    def load(self, root: str | os.PathLike[str] | None, split: str, *, need_gallery: bool = True) -> BenchmarkSplit:
        """Load the annotations of ``split`` (and the gallery listing) under ``root``."""

    @abc.abstractmethod
    def metrics(self, split: BenchmarkSplit, rankings: Mapping[str, Sequence[str]],
                subset: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
        """The protocol's metrics (percent) from rankings keyed by triplet id (see ``protocols``)."""

    @abc.abstractmethod
    def layout(self) -> str:
        """A short description of the expected directory layout (shown in errors)."""


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON annotation file; errors name the file and what it should be."""
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


def expect(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise DatasetError(f"{where}: {msg}")


def field_of(entry: Any, name: str, kinds: type | tuple[type, ...], where: str) -> Any:
    expect(isinstance(entry, dict), where, f"expected an object, got {type(entry).__name__}")
    expect(name in entry, where, f"missing field {name!r}")
    value = entry[name]
    expect(isinstance(value, kinds), where,
           f"field {name!r} must be {getattr(kinds, '__name__', kinds)}, got {type(value).__name__} {value!r}")
    return value


def scan_files(folder: Path) -> dict[str, str]:
    """``{file name: file name}`` of the regular files directly in ``folder`` (one directory read)."""
    try:
        with os.scandir(folder) as it:
            return {e.name: e.name for e in it if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return {}
