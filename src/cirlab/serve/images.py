"""Untrusted image bytes -> a checked RGB image; gallery files -> cached thumbnails (both through
``cirlab.imaging.open_image``, which checks the size from the header before decoding)."""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Iterator

from PIL import Image

from ..imaging import DEFAULT_BOUNDS, ImageBounds, ImageError, image_size, open_image
from .errors import RequestError
from .limits import ServeLimits

#: formats an upload may have; PIL's other decoders (EPS via Ghostscript, ...) are never reached
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


#: HTTP status of each ``cirlab.imaging.ImageError`` kind
STATUS = {"empty": 400, "unsupported": 415, "too-large": 413, "aspect": 400, "corrupt": 400}


def decode_upload(data: bytes | IO[bytes], limits: ServeLimits, name: str = "image") -> Image.Image:
    """Decode an uploaded image (bytes or a binary file, read from its start), refusing empty, oversized,
    non-image, truncated, bomb and extreme-aspect inputs.

    The size comes from the header (``cirlab.imaging.open_image``), so an image over
    ``limits.max_pixels`` or ``limits.max_aspect`` is refused before its pixels are decompressed.
    """
    _check_bytes(data, limits, name)
    with _as_request_error(name):
        return open_image(data, limits.image_bounds, name=name, formats=UPLOAD_FORMATS, verify=True)


def upload_pixels(data: bytes | IO[bytes], limits: ServeLimits, name: str = "image") -> int:
    """Width x height of an uploaded image, from its header only (the same refusals as ``decode_upload``
    for what the header shows)."""
    _check_bytes(data, limits, name)
    with _as_request_error(name):
        return image_size(data, limits.image_bounds, name=name, formats=UPLOAD_FORMATS)


def _check_bytes(data: bytes | IO[bytes], limits: ServeLimits, name: str) -> None:
    if isinstance(data, (bytes, bytearray)):
        size = len(data)
    else:
        size = data.seek(0, os.SEEK_END)
        data.seek(0)
    if not size:
        raise RequestError(400, f"{name}: the uploaded file is empty")
    if size > limits.max_upload_bytes:
        raise RequestError(413, f"{name}: {size} bytes; the upload limit is {limits.max_upload_bytes} bytes")


@contextmanager
def _as_request_error(name: str) -> Iterator[None]:
    try:
        yield
    except ImageError as e:
        if e.kind == "unsupported":
            raise RequestError(415, f"{name}: not an image this service reads ({', '.join(UPLOAD_FORMATS)})") from None
        raise RequestError(STATUS[e.kind], str(e)) from None


class ThumbnailCache:
    """PNG/JPEG thumbnails of gallery files, made on first request and kept (bounded, LRU)."""

    def __init__(self, max_items: int = 4096) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, int, float], tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, size: int, bounds: ImageBounds = DEFAULT_BOUNDS, name: str = "image"
            ) -> tuple[bytes, str]:
        """``(bytes, media type)`` of ``path`` shrunk to fit ``size`` x ``size`` (never enlarged);
        ``cirlab.imaging.ImageError`` (naming ``name``) for a file that cannot be decoded within ``bounds``."""
        key = (str(path), size, os.stat(path).st_mtime)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        out = make_thumbnail(path, size, bounds, name)
        with self._lock:
            self._items[key] = out
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return out


def make_thumbnail(path: Path, size: int, bounds: ImageBounds = DEFAULT_BOUNDS, name: str | None = None
                   ) -> tuple[bytes, str]:
    """``path`` shrunk to fit ``size`` x ``size``: PNG for lossless sources, JPEG otherwise. A JPEG is
    decoded at a reduced scale (``bounds.draft_pixels`` is replaced by what the thumbnail needs)."""
    im = open_image(path, replace(bounds, draft_pixels=4 * size * size), name=name, mode=None)
    lossless = im.format in ("PNG", "GIF", "BMP")
    im = im.convert("RGBA" if lossless and "A" in im.getbands() else "RGB")
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if lossless:
        im.save(buf, "PNG", optimize=False)
        return buf.getvalue(), "image/png"
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue(), "image/jpeg"
