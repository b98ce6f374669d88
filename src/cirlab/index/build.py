"""Encode a gallery once and keep its features: chunked, resumable, atomic.

``build_index(backbone, gallery, directory)`` encodes the gallery in chunks
(each chunk saved as it completes, so an interrupted run resumes where it
stopped), then writes the index and its manifest (backbone spec, weights
fingerprint, dim, count, ids). Calling it again on an unchanged gallery with
the same backbone loads the saved index and encodes nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import __version__
from ..backbones.base import Backbone
from ..data.record import Gallery
from .base import MANIFEST, VectorIndex, create_index, load_index, read_manifest

log = logging.getLogger(__name__)
CHUNKS = "chunks"


def ids_checksum(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _chunk_state(backbone: Backbone, gallery: Gallery, chunk_size: int) -> dict[str, Any]:
    return {"backbone": backbone.spec, "fingerprint": backbone.fingerprint(), "ids": ids_checksum(gallery.ids),
            "chunk_size": chunk_size}


def encode_gallery(backbone: Backbone, gallery: Gallery, work_dir: Path, chunk_size: int = 2048,
                   batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """(N, D) features of the gallery; finished chunks under ``work_dir/chunks`` are reused."""
    cdir = work_dir / CHUNKS
    state = _chunk_state(backbone, gallery, chunk_size)
    state_p = cdir / "state.json"
    if cdir.is_dir():
        try:
            old = json.loads(state_p.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != state:
            shutil.rmtree(cdir)
    cdir.mkdir(parents=True, exist_ok=True)
    state_p.write_text(json.dumps(state))
    n_chunks = (len(gallery) + chunk_size - 1) // chunk_size
    feats = []
    bar = tqdm(total=len(gallery), desc="encode gallery", unit="img", disable=not progress)
    for c in range(n_chunks):
        path = cdir / f"chunk-{c:05d}.safetensors"
        lo, hi = c * chunk_size, min(len(gallery), (c + 1) * chunk_size)
        x = None
        if path.is_file():
            try:
                x = load_file(str(path))["features"]
                if len(x) != hi - lo:
                    x = None
            except Exception:  # a torn file from a crash: encode again
                x = None
        if x is None:
            x = backbone.encode_images(gallery.paths[lo:hi], batch_size=batch_size)
            tmp = path.with_name(path.name + ".tmp")
            save_file({"features": x.contiguous()}, str(tmp))
            os.replace(tmp, path)
        feats.append(x)
        bar.update(hi - lo)
    bar.close()
    return torch.cat(feats) if feats else torch.empty(0, backbone.embed_dim)


def build_index(backbone: Backbone, gallery: Gallery, directory: str | os.PathLike[str], index_spec: str = "exact",
                chunk_size: int = 2048, batch_size: int = 64, progress: bool = True,
                extra: dict[str, Any] | None = None) -> VectorIndex:
    """Build (or reuse) the index of ``gallery`` under ``directory``."""
    d = Path(directory)
    if (d / MANIFEST).is_file():
        m = read_manifest(d)
        if (m.get("backbone") == backbone.spec and m.get("fingerprint") == backbone.fingerprint()
                and m.get("ids_checksum") == ids_checksum(gallery.ids) and m.get("index") == index_spec):
            index, _ = load_index(d)
            log.info("reusing index %s (%d images)", d, len(index))
            return index
    d.mkdir(parents=True, exist_ok=True)
    feats = encode_gallery(backbone, gallery, d, chunk_size, batch_size, progress)
    index = create_index(index_spec, dim=backbone.embed_dim)
    index.add(gallery.ids, feats)
    manifest = {"backbone": backbone.spec, "fingerprint": backbone.fingerprint(), "ids_checksum": ids_checksum(gallery.ids),
                "paths": [str(p) for p in gallery.paths], "cirlab": __version__, **(extra or {})}
    index.save(d, manifest)
    shutil.rmtree(d / CHUNKS, ignore_errors=True)
    return index
