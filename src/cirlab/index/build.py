"""Encode a gallery once and keep its features: chunked, resumable, atomic.

``build_index(backbone, gallery, directory)`` encodes the gallery in chunks
(each chunk saved as it completes, so an interrupted run resumes where it
stopped), then writes the index and its manifest (backbone spec, weights
fingerprint, dim, count, ids). Chunks hold the raw projected features; the
index stores their directions and norms (``VectorIndex.add_raw``). Calling it
again on an unchanged gallery with the same backbone loads the saved index and
encodes nothing (an index saved before norms were kept is built once more).

Images are encoded through the shared feature cache
(``cirlab.backbones.encoding``: keyed by backbone fingerprint + preprocessing +
file content), so another index of the same gallery (another directory,
another index kind, ``cirlab eval`` after ``cirlab index``) encodes nothing
either, and a run killed mid-chunk keeps every batch it committed.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import __version__
from ..backbones.base import Backbone
from ..backbones.encoding import EncodeStats, FeatureCache, encode_images, open_cache
from ..data.record import Gallery
from ..errors import CirlabError, DatasetError, IndexMismatchError
from ..fileutil import DirLock, atomic_write_text, sha256_file
from .base import MANIFEST, VectorIndex, create_index, ids_checksum, load_index, read_manifest
from .integrity import FILES_KEY, check_files, claim_output, remove_owned

log = logging.getLogger(__name__)
CHUNKS = "chunks"
PATHS_ROOT = "paths_root"


def _chunk_state(backbone: Backbone, gallery: Gallery, chunk_size: int) -> dict[str, Any]:
    return {"backbone": backbone.spec, "fingerprint": backbone.fingerprint(), "ids": ids_checksum(gallery.ids),
            "chunk_size": chunk_size, "features": "raw"}


def prepare_chunks(backbone: Backbone, gallery: Gallery, work_dir: Path, chunk_size: int) -> Path:
    """The chunk directory for this (backbone, gallery, chunk size); stale chunks of another build are removed
    (only the files a build writes: anything else there stops the build with an error)."""
    cdir = Path(work_dir) / CHUNKS
    state = _chunk_state(backbone, gallery, chunk_size)
    state_p = cdir / "state.json"
    if cdir.is_dir():
        try:
            old = json.loads(state_p.read_text())
        except (OSError, ValueError):
            old = None
        if old != state:
            remove_owned(cdir)
    cdir.mkdir(parents=True, exist_ok=True)
    if not state_p.is_file():
        atomic_write_text(state_p, json.dumps(state))
    return cdir


def chunk_path(cdir: Path, c: int) -> Path:
    return cdir / f"chunk-{c:05d}.safetensors"


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(lo, min(n, lo + chunk_size)) for lo in range(0, n, chunk_size)]


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name.replace(".safetensors", ".sha256"))


def read_chunk(path: Path, rows: int) -> torch.Tensor | None:
    """A finished chunk's features, or None when it is missing, torn, changed or of the wrong length."""
    digest = _digest_path(path)
    if not path.is_file() or not digest.is_file():
        return None
    try:
        if sha256_file(path) != digest.read_text().strip():
            log.warning("%s: content changed since it was written; encoding it again", path)
            return None
        x = load_file(str(path))["features"]
    except Exception:  # a torn file from a crash: encode again
        return None
    return x if len(x) == rows else None


def write_chunk(path: Path, x: torch.Tensor) -> None:
    """Write a chunk atomically (write-then-rename), then its SHA-256: a crash leaves either no usable chunk
    or a whole, checksummed one."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({"features": x.contiguous()}, str(tmp))
    os.replace(tmp, path)
    atomic_write_text(_digest_path(path), sha256_file(path))


def missing_chunks(cdir: Path, n: int, chunk_size: int) -> list[int]:
    return [c for c, (lo, hi) in enumerate(chunk_bounds(n, chunk_size)) if read_chunk(chunk_path(cdir, c), hi - lo) is None]


def encode_gallery(backbone: Backbone, gallery: Gallery, work_dir: Path, chunk_size: int = 2048,
                   batch_size: int = 64, progress: bool = True, cache: FeatureCache | str | bool | None = True,
                   stats: EncodeStats | None = None, normalize: bool = True) -> torch.Tensor:
    """(N, D) features of the gallery (raw with ``normalize=False``); finished chunks (raw features) under
    ``work_dir/chunks`` are reused, and the other images are looked up in the feature cache (``cache``: see
    ``encoding.open_cache``) first."""
    cdir = prepare_chunks(backbone, gallery, Path(work_dir), chunk_size)
    store = open_cache(cache)
    stats = stats if stats is not None else EncodeStats()
    feats = []
    bar = tqdm(total=len(gallery), desc="encode gallery", unit="img", disable=not progress)
    for c, (lo, hi) in enumerate(chunk_bounds(len(gallery), chunk_size)):
        path = chunk_path(cdir, c)
        x = read_chunk(path, hi - lo)
        if x is None:
            x = encode_images(backbone, gallery.paths[lo:hi], batch_size=batch_size, device=None,
                              cache=store if store is not None else False, progress=False, stats=stats,
                              normalize=False)
            write_chunk(path, x)
        else:
            stats.add(EncodeStats(hi - lo, hi - lo, 0))
        feats.append(x)
        bar.update(hi - lo)
    bar.close()
    out = torch.cat(feats) if feats else torch.empty(0, backbone.embed_dim)
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def build_index(backbone: Backbone, gallery: Gallery, directory: str | os.PathLike[str], index_spec: str = "exact",
                chunk_size: int = 2048, batch_size: int = 64, progress: bool = True,
                extra: dict[str, Any] | None = None, ray: str | bool | None = None,
                ray_options: dict[str, Any] | None = None, repair: bool = False,
                cache: FeatureCache | str | bool | None = True, stats: EncodeStats | None = None) -> VectorIndex:
    """Build (or reuse) the index of ``gallery`` under ``directory``.

    ``ray``: encode the missing chunks with Ray Data first (``True``/``""`` = a local Ray, or a cluster
    address such as ``"auto"`` or ``"ray://head:10001"``; ``ray_options`` go to
    ``cirlab.index.ray_encode.encode_chunks_ray``). An interrupted build resumes from its finished chunks;
    the manifest is written last, so a directory without ``index.json`` holds no (possibly torn) index.
    Only a new or empty directory, or one holding a cirlab index, is written into (``claim_output``), by
    one build at a time (``DirLock``). A saved index that fits is reused after its files are verified;
    a damaged one is an error unless ``repair``, which rebuilds it.
    ``cache``: the feature cache (default: the shared one; ``False``/``"off"``: none). ``stats`` (if given)
    counts the images encoded and reused; the count is also logged.
    """
    stats = stats if stats is not None else EncodeStats()
    if chunk_size < 1:
        raise CirlabError(f"--chunk-size must be at least 1, got {chunk_size}")
    if batch_size < 1:
        raise CirlabError(f"--batch-size must be at least 1, got {batch_size}")
    d = Path(directory)
    check_gallery_files(gallery)
    claim_output(d, gallery.paths)
    with DirLock(d, "indexed") as lock:
        if lock.took_over:
            log.warning("%s: taking over the lock of process %d, which is gone (its build was interrupted)",
                        d, lock.took_over)
        if (d / MANIFEST).is_file():
            reused = _reuse(backbone, gallery, d, index_spec, repair)
            if reused is not None:
                stats.add(EncodeStats(len(reused), len(reused), 0))
                remove_owned(d / CHUNKS)  # left by a build killed after its manifest landed
                return reused
        # an index being rebuilt is no index until its new manifest lands
        (d / MANIFEST).unlink(missing_ok=True)
        if ray is not None and ray is not False:
            from .ray_encode import encode_chunks_ray

            encode_chunks_ray(backbone, gallery, d, chunk_size=chunk_size, batch_size=batch_size,
                              address=None if ray is True or ray == "" else str(ray), progress=progress,
                              **(ray_options or {}))
        raw = encode_gallery(backbone, gallery, d, chunk_size, batch_size, progress, cache=cache, stats=stats,
                             normalize=False)
        log.info("gallery of %d images: %s", len(gallery), stats)
        index = create_index(index_spec, dim=backbone.embed_dim)
        index.add_raw(gallery.ids, raw)
        manifest = {"backbone": backbone.spec, "fingerprint": backbone.fingerprint(),
                    "ids_checksum": ids_checksum(gallery.ids), **relative_paths(d, gallery.paths),
                    "cirlab": __version__, **(extra or {})}
        index.save(d, manifest)
        remove_owned(d / CHUNKS)
        return index


def check_gallery_files(gallery: Gallery) -> None:
    """Every gallery path must be a file: raise ``DatasetError`` naming the first that are not."""
    bad = [(i, p) for i, p in zip(gallery.ids, gallery.paths) if not Path(p).is_file()]
    if bad:
        shown = ", ".join(f"{i!r} ({p}: {'a directory' if Path(p).is_dir() else 'missing'})" for i, p in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DatasetError(f"{len(bad)} of {len(gallery)} gallery images are not files: {shown}{more}")


def _reuse(backbone: Backbone, gallery: Gallery, d: Path, index_spec: str, repair: bool) -> VectorIndex | None:
    """The saved index when it fits this build and is intact; None when it must be (re)built."""
    try:
        m = read_manifest(d)
    except IndexMismatchError:
        if not repair:
            raise
        m = {}
    if not (m.get("backbone") == backbone.spec and m.get("fingerprint") == backbone.fingerprint()
            and m.get("ids_checksum") == ids_checksum(gallery.ids) and m.get("index") == index_spec):
        return None
    if not m.get(FILES_KEY):
        log.info("%s: the saved index records no checksums (an older cirlab); building it again", d)
        return None
    if not m.get("raw_norms"):
        log.info("%s: the saved index keeps no raw-feature norms (an older cirlab); building it again", d)
        return None
    try:
        check_files(d, m, full=True)
        index, _ = load_index(d)
    except IndexMismatchError as e:
        if not repair:
            raise
        log.warning("%s: rebuilding a damaged index (%s)", d, e)
        return None
    log.info("reusing index %s (%d images): encoded 0 images", d, len(index))
    return index


def relative_paths(directory: Path, paths: list[Path]) -> dict[str, Any]:
    """The manifest's ``paths``, relative to the index directory (so index and gallery can move together)."""
    root = Path(directory).resolve()
    return {PATHS_ROOT: "index", "paths": [os.path.relpath(Path(p).resolve(), root) for p in paths]}


def manifest_paths(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> list[str]:
    """The gallery paths of a manifest as usable paths: relative to the index directory (current
    manifests) or as written (older manifests stored them relative to the build's working directory)."""
    paths = [str(p) for p in manifest.get("paths", [])]
    if manifest.get(PATHS_ROOT) == "index":
        root = Path(directory).resolve()
        return [os.path.normpath(root / p) for p in paths]
    return paths
