"""Untrusted image bytes -> a checked RGB image; gallery files -> cached thumbnails."""
from __future__ import annotations

import io
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RequestError
from .limits import ServeLimits

#: formats an upload may have; PIL's other decoders (EPS via Ghostscript, ...) are never reached
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


def decode_upload(data: bytes, limits: ServeLimits, name: str = "image") -> Image.Image:
    """Decode an uploaded image, refusing empty, oversized, non-image, truncated and bomb inputs.

    The pixel count comes from the header (``Image.open`` is lazy), so an image
    over ``limits.max_pixels`` is refused before its pixels are decompressed.
    """
    if not data:
        raise RequestError(400, f"{name}: the uploaded file is empty")
    if len(data) > limits.max_upload_bytes:
        raise RequestError(413, f"{name}: {len(data)} bytes; the upload limit is {limits.max_upload_bytes} bytes")
    with warnings.catch_warnings():
        # the pixel check below replaces PIL's own bomb warning; PIL's hard limit still raises
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            probe = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
        except Image.DecompressionBombError as e:
            raise RequestError(413, f"{name}: image too large ({e}); the limit is {limits.max_pixels} pixels") from None
        except UnidentifiedImageError:
            raise RequestError(415, f"{name}: not an image this service reads "
                                    f"({', '.join(UPLOAD_FORMATS)})") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise RequestError(400, f"{name}: unreadable image header ({e})") from None
        w, h = probe.size
        if w < 1 or h < 1:
            raise RequestError(400, f"{name}: image has no pixels ({w}x{h})")
        if w * h > limits.max_pixels:
            raise RequestError(413, f"{name}: image is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels} "
                                    "pixels (resize it first)")
        fmt = probe.format
        try:
            probe.verify()  # walks the chunk structure and checksums (PNG) without keeping pixels
            im = Image.open(io.BytesIO(data), formats=(fmt,) if fmt else UPLOAD_FORMATS)
            im.load()
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
        except Image.DecompressionBombError as e:
            raise RequestError(413, f"{name}: image too large ({e})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise RequestError(400, f"{name}: the {fmt or 'image'} data is truncated or corrupt ({e})") from None


class ThumbnailCache:
    """PNG/JPEG thumbnails of gallery files, made on first request and kept (bounded, LRU)."""

    def __init__(self, max_items: int = 4096) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, int, float], tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, size: int) -> tuple[bytes, str]:
        """``(bytes, media type)`` of ``path`` shrunk to fit ``size`` x ``size`` (never enlarged)."""
        key = (str(path), size, os.stat(path).st_mtime)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        out = make_thumbnail(path, size)
        with self._lock:
            self._items[key] = out
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return out


def make_thumbnail(path: Path, size: int) -> tuple[bytes, str]:
    with Image.open(path) as im:
        lossless = im.format in ("PNG", "GIF", "BMP")
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
        im = ImageOps.exif_transpose(im)
        im = im.convert("RGBA" if lossless and "A" in im.getbands() else "RGB")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if lossless:
            im.save(buf, "PNG", optimize=False)
            return buf.getvalue(), "image/png"
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"
