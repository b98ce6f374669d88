"""What makes an index directory trustworthy: it is ours, it is whole, and its files are what was written.

- ``claim_output(directory, gallery)``: an index is only written into a new or empty directory, or
  one that already holds a cirlab index (or an interrupted build of one), and never into a directory
  that holds gallery images. Nothing else is touched.
- ``remove_owned(chunks_dir)``: deletes only the files an index build writes there.
- The manifest records every stored file (``files``: size, mtime, SHA-256; ``cirlab.fileutil.seal``);
  ``check_files`` checks them on every load (one ``stat`` per file unless they changed) and
  ``verify_index`` re-hashes them all and loads the index (``cirlab index --verify``).
"""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import IndexMismatchError
from ..fileutil import LOCK_NAME, check_sealed

FILES_KEY = "files"
#: what an index build writes under ``chunks/`` (anything else there is not ours)
CHUNK_PATTERNS = ("state.json", "state.json.tmp", "chunk-*.safetensors", "chunk-*.safetensors.tmp", "chunk-*.sha256",
                  "chunk-*.sha256.tmp", "*.tmp")
REPAIR_HINT = "re-run `cirlab index` with --repair to rebuild it"


def check_files(directory: str | os.PathLike[str], manifest: Mapping[str, Any], full: bool = False) -> None:
    """Raise ``IndexMismatchError`` naming every stored file that is missing, truncated or changed."""
    records = manifest.get(FILES_KEY)
    if not records:
        return
    problems = check_sealed(directory, records, full=full)
    if problems:
        raise IndexMismatchError(f"{directory}: the index is damaged: {'; '.join(problems)}; {REPAIR_HINT}")


def verify_index(directory: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """Re-hash every stored file and load the index: (vectors, problems); no problems = intact."""
    from .base import load_index, read_manifest

    try:
        manifest = read_manifest(directory)
        if not manifest.get(FILES_KEY):
            return 0, [f"{directory}: the manifest records no checksums (written by an older cirlab); {REPAIR_HINT}"]
        problems = check_sealed(directory, manifest[FILES_KEY], full=True)
        if problems:
            return 0, problems
        index, _ = load_index(directory)
    except IndexMismatchError as e:
        return 0, [str(e)]
    return len(index), []


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory)
    except ValueError:
        return False
    return True


def claim_output(directory: str | os.PathLike[str], gallery_paths: Sequence[Path]) -> None:
    """Refuse an output directory an index build must not write into (see the module docstring)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise IndexMismatchError(f"{d}: exists and is not a directory; give a directory for the index")
    root = d.resolve()
    inside = next((p for p in gallery_paths if _inside(Path(p), root)), None)
    if inside is not None:
        raise IndexMismatchError(f"{d}: holds gallery images (e.g. {inside}); write the index to a directory "
                                 f"outside the gallery")
    if not d.is_dir() or _is_index_dir(d):
        return
    others = sorted(p.name for p in d.iterdir())
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise IndexMismatchError(f"{d}: exists and is not a cirlab index directory (it holds {shown}); give a new "
                                 f"or empty directory")


def _is_index_dir(d: Path) -> bool:
    """Whether ``d`` holds a cirlab manifest, a build's lock or an interrupted build's chunk state."""
    if (d / LOCK_NAME).is_file() or (d / "chunks" / "state.json").is_file():
        return True
    try:
        manifest = json.loads((d / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "cirlab" in manifest


def _owned(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in CHUNK_PATTERNS)


def foreign_files(chunks_dir: Path) -> list[str]:
    """Names under ``chunks_dir`` that an index build did not write."""
    if not chunks_dir.is_dir():
        return []
    return sorted(p.name for p in chunks_dir.iterdir() if not (p.is_file() and _owned(p.name)))


def remove_owned(chunks_dir: Path) -> None:
    """Delete the build's own files in ``chunks_dir`` (and the directory when that empties it)."""
    foreign = foreign_files(chunks_dir)
    if foreign:
        raise IndexMismatchError(f"{chunks_dir}: holds files an index build did not write ({', '.join(foreign[:5])}); "
                                 f"move them away or use another --out")
    if not chunks_dir.is_dir():
        return
    for p in chunks_dir.iterdir():
        p.unlink(missing_ok=True)
    try:
        chunks_dir.rmdir()
    except OSError:
        pass
