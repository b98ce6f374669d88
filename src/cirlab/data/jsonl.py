"""The cirlab dataset format, for users' own data and for the built-in world.

A dataset is a directory (or two explicit files)::

    <root>/gallery.jsonl    {"id": "...", "path": "images/x.png", "caption": "..."}   one per image
    <root>/triplets.jsonl   {"id": "...", "reference": "...", "caption": "...", "targets": ["..."]}

``path`` is relative to the file that names it. Instead of ``gallery.jsonl`` a
folder of images may be given: every image file becomes an entry whose id is its
file name without extension. Every error names the file and line at fault.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DatasetError
from ..fileutil import atomic_write_text, check_sealed, read_json_object
from .record import CIRDataset, CIRTriplet, Gallery

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are skipped, bad lines raise with file:line."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, not a JSONL file") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                   f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise DatasetError(f"{where}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = "/".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise DatasetError(f"{where}: field {name!r} must be {names}, got {type(value).__name__} {value!r}")
    return value


def _id(obj: dict[str, Any], name: str, where: str) -> str:
    """An image or query id: a non-empty string (integers are read as their decimal text)."""
    value = str(_field(obj, name, (str, int), where))
    if not value.strip():
        raise DatasetError(f"{where}: field {name!r} is an empty id")
    return value


def read_gallery_jsonl(path: Path) -> Gallery:
    ids: list[str] = []
    paths: list[Path] = []
    captions: list[str | None] = []
    metas: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        image_id = _id(obj, "id", where)
        rel = _field(obj, "path", str, where)
        if not rel.strip():
            raise DatasetError(f"{where}: field 'path' is empty")
        if image_id in seen:
            raise DatasetError(f"{where}: duplicate image id {image_id!r} (first on line {seen[image_id]})")
        seen[image_id] = lineno
        ids.append(image_id)
        paths.append((path.parent / rel))
        cap = obj.get("caption")
        captions.append(cap if isinstance(cap, str) else None)
        meta = obj.get("meta", {})
        metas.append(meta if isinstance(meta, dict) else {})
    return Gallery(ids, paths, captions, metas)


def read_gallery_folder(folder: Path) -> Gallery:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: gallery folder not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    ids: list[str] = []
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise DatasetError(f"{p}: image id {p.stem!r} clashes with {seen[p.stem]}")
        seen[p.stem] = p
        ids.append(p.stem)
    return Gallery(ids, files)


def read_gallery(source: Path) -> Gallery:
    """A gallery from a ``gallery.jsonl`` file or from a folder of images."""
    source = Path(source)
    if source.is_dir():
        listing = source / "gallery.jsonl"
        return read_gallery_jsonl(listing) if listing.is_file() else read_gallery_folder(source)
    return read_gallery_jsonl(source)


def read_triplets(path: Path, gallery: Gallery | None = None) -> list[CIRTriplet]:
    """Parse ``triplets.jsonl``; with a gallery, every referenced id must be in it."""
    out: list[CIRTriplet] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        tid = _id(obj, "id", where)
        if tid in seen:
            raise DatasetError(f"{where}: duplicate triplet id {tid!r} (first on line {seen[tid]})")
        seen[tid] = lineno
        ref = _id(obj, "reference", where)
        caption = _field(obj, "caption", str, where)
        targets = obj.get("targets", [])
        if not isinstance(targets, list) or not all(isinstance(t, (str, int)) and not isinstance(t, bool)
                                                    and str(t).strip() for t in targets):
            raise DatasetError(f"{where}: field 'targets' must be a list of non-empty ids, got {targets!r}")
        targets = [str(t) for t in targets]
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise DatasetError(f"{where}: field 'meta' must be an object")
        if gallery is not None:
            for role, image_id in [("reference", ref)] + [("target", t) for t in targets]:
                if image_id not in gallery:
                    raise DatasetError(f"{where}: {role} image id {image_id!r} is not in the gallery")
        out.append(CIRTriplet(tid, ref, caption, tuple(targets), meta))
    return out


def load_dataset(root: str | os.PathLike[str], *, triplets: str | os.PathLike[str] | None = None,
                 gallery: str | os.PathLike[str] | None = None, check_files: bool = True) -> CIRDataset:
    """Load a dataset directory in the cirlab format (see the module docstring).

    ``check_files`` verifies that every gallery image exists, naming the first missing ones. A
    ``dataset.json`` with ``files`` records (a generated world) has every recorded file checked
    first: one ``stat`` each, and a re-hash of those whose size or mtime changed.
    """
    root_p = Path(root)
    meta = _dataset_info(root_p)
    trip_p = Path(triplets) if triplets else root_p / "triplets.jsonl"
    gal_src = Path(gallery) if gallery else root_p
    if not gallery and not (root_p / "gallery.jsonl").is_file():
        gal_src = root_p / "images" if (root_p / "images").is_dir() else root_p
    g = read_gallery(gal_src)
    if check_files:
        missing = g.missing_files()
        if missing:
            first = ", ".join(f"{i!r} ({g.path(i)})" for i in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DatasetError(f"{gal_src}: {len(missing)} gallery image(s) missing: {first}{more}")
    trips = read_triplets(trip_p, g)
    return CIRDataset(name=str(meta.get("name", root_p.name)), gallery=g, triplets=trips, root=root_p, meta=meta)


def _dataset_info(root: Path) -> dict[str, Any]:
    """``dataset.json`` (``{}`` when absent), after checking the files it records."""
    info = root / "dataset.json"
    if not info.is_file():
        return {}
    meta = read_json_object(info, DatasetError, "malformed dataset description")
    records = meta.get("files")
    if records:
        if not isinstance(records, dict):
            raise DatasetError(f"{info}: field 'files' must be an object of file records")
        problems = check_sealed(root, records)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DatasetError(f"{root}: the dataset changed since it was written: {shown}. Regenerate it, or "
                               f"remove the 'files' records from {info} to accept the change")
    return meta


def write_json(path: Path, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON atomically (temp file + rename); returns ``path``."""
    atomic_write_text(path, json.dumps(obj, indent=indent))
    return Path(path)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows atomically (temp file + rename), so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_dataset(root: Path, gallery: Gallery, triplets: Iterable[CIRTriplet], *,
                  info: dict[str, Any] | None = None) -> None:
    """Write ``gallery.jsonl`` (+ ``triplets.jsonl``, ``dataset.json``) under ``root``."""
    root = Path(root)
    rows = []
    for i, p, c, m in zip(gallery.ids, gallery.paths, gallery.captions, gallery.meta):
        row: dict[str, Any] = {"id": i, "path": os.path.relpath(p, root)}
        if c is not None:
            row["caption"] = c
        if m:
            row["meta"] = m
        rows.append(row)
    write_jsonl(root / "gallery.jsonl", rows)
    write_jsonl(root / "triplets.jsonl", (t.to_json() for t in triplets))
    if info is not None:
        write_json(root / "dataset.json", info, indent=2)
