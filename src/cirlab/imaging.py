"""Opening untrusted images with bounds checked from the header, before any pixel is decoded.

Every path that turns a file or uploaded bytes into pixels goes through ``open_image``:
the backbones' preprocessing (``cirlab.backbones.base.load_image``), the HTTP service's
uploads and its thumbnails. It reads the header only (``PIL.Image.open`` is lazy), refuses

* images over ``bounds.max_pixels`` (a 50 KB PNG that inflates to gigabytes is never decoded),
* images whose long side exceeds ``bounds.max_aspect`` times the short side (a 1 x 16,000,000
  strip costs seconds of CPU, and preprocessing that scales the short side up to the model's
  input size turns a 16 x 20,000 strip into hundreds of megabytes),

and only then decodes, at a reduced scale where the format supports it and the caller asked
for it (JPEG's DCT scaling via ``Image.draft``). Failures raise ``ImageError`` naming the
image, the value and the limit; its ``kind`` says what went wrong (the service maps it to an
HTTP status).
"""
from __future__ import annotations

import io
import math
import os
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from struct import error as struct_error
from typing import IO, Any, Iterator, Union

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CirlabError

ImageSource = Union[str, "os.PathLike[str]", bytes, IO[bytes]]

#: PIL's own decompression-bomb threshold (it warns above it and refuses twice as many pixels)
PIL_MAX_PIXELS = 89_478_485


class ImageError(CirlabError):
    """An image that cannot or may not be decoded.

    ``kind`` is one of ``"empty"``, ``"unsupported"``, ``"too-large"``, ``"aspect"``, ``"corrupt"``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageBounds:
    """What an image may cost before it is decoded."""

    #: most width x height pixels
    max_pixels: int = PIL_MAX_PIXELS
    #: most long side / short side
    max_aspect: float = 20.0
    #: images with more pixels are decoded at the smallest 1/2, 1/4 or 1/8 scale that fits under this
    #: many pixels when the format can (JPEG); ``None`` decodes at full size
    draft_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"ImageBounds.max_pixels must be at least 1, got {self.max_pixels}")
        if not self.max_aspect >= 1:
            raise ValueError(f"ImageBounds.max_aspect must be at least 1, got {self.max_aspect}")
        if self.draft_pixels is not None and self.draft_pixels < 1:
            raise ValueError(f"ImageBounds.draft_pixels must be at least 1, got {self.draft_pixels}")


DEFAULT_BOUNDS = ImageBounds()


def check_size(width: int, height: int, bounds: ImageBounds = DEFAULT_BOUNDS, name: str = "image") -> None:
    """Raise ``ImageError`` unless a ``width`` x ``height`` image is within ``bounds``."""
    if width < 1 or height < 1:
        raise ImageError("corrupt", f"{name}: image has no pixels ({width}x{height})")
    if width * height > bounds.max_pixels:
        raise ImageError("too-large", f"{name}: image is {width}x{height} = {width * height} pixels; the limit is "
                                      f"{bounds.max_pixels} pixels (resize it first)")
    aspect = max(width, height) / min(width, height)
    if aspect > bounds.max_aspect:
        raise ImageError("aspect", f"{name}: image is {width}x{height}, an aspect ratio of {aspect:.4g}:1; the limit "
                                   f"is {bounds.max_aspect:g}:1 (crop it first)")


def draft_scale(width: int, height: int, draft_pixels: int | None) -> int:
    """The JPEG decoding scale (1, 2, 4 or 8) that brings ``width`` x ``height`` under ``draft_pixels``."""
    if draft_pixels is None:
        return 1
    scale = 1
    while scale < 8 and math.ceil(width / scale) * math.ceil(height / scale) > draft_pixels:
        scale *= 2
    return scale


def _describe(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return f"image {os.fspath(source)!r}"
    return "image"


@contextmanager
def _probe(source: ImageSource, bounds: ImageBounds, label: str, formats: tuple[str, ...] | None
           ) -> Iterator[tuple[IO[bytes], Image.Image]]:
    """The open file and its lazily opened image, whose header is within ``bounds``."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("empty", f"{label}: the file is empty")
        opened: Any = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            opened = open(os.fspath(source), "rb")
        except FileNotFoundError:
            raise ImageError("unsupported", f"{label}: no such file") from None
        except IsADirectoryError:
            raise ImageError("unsupported", f"{label}: is a directory, not an image file") from None
        except PermissionError as e:
            raise ImageError("unsupported", f"{label}: cannot be read ({e.strerror})") from None
    else:
        source.seek(0)
        opened = nullcontext(source)  # the caller's file: not closed here
    with warnings.catch_warnings(), opened as f:
        # the bounds replace PIL's own bomb warning; its hard limit still raises (caught below)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            probe = Image.open(f, formats=formats)
        except Image.DecompressionBombError as e:
            raise ImageError("too-large", f"{label}: image too large ({e}); the limit is "
                                          f"{bounds.max_pixels} pixels") from None
        except UnidentifiedImageError:
            known = f" ({', '.join(formats)})" if formats else ""
            raise ImageError("unsupported", f"{label}: not an image file this reads{known}") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct_error) as e:
            raise ImageError("corrupt", f"{label}: unreadable image header ({e})") from None
        check_size(*probe.size, bounds, label)
        yield f, probe


def image_size(source: ImageSource, bounds: ImageBounds = DEFAULT_BOUNDS, *, name: str | None = None,
               formats: tuple[str, ...] | None = None) -> int:
    """Width x height of ``source`` from its header alone (``ImageError`` when it is over ``bounds``)."""
    with _probe(source, bounds, _describe(source, name), formats) as (_, probe):
        return probe.size[0] * probe.size[1]


def open_image(source: ImageSource, bounds: ImageBounds = DEFAULT_BOUNDS, *, name: str | None = None,
               formats: tuple[str, ...] | None = None, verify: bool = False, exif_transpose: bool = True,
               mode: str | None = "RGB") -> Image.Image:
    """Decode ``source`` (a path, bytes or a binary file read from its start) into a loaded PIL image, within
    ``bounds``.

    ``formats`` limits the decoders PIL may try (``None``: every format PIL knows); ``verify`` first
    walks the file's structure and checksums (PNG CRCs) without keeping pixels; ``exif_transpose``
    applies the EXIF orientation; ``mode`` converts the result (``None`` keeps the file's mode). The
    result's ``format`` is the file's format.
    """
    label = _describe(source, name)
    with _probe(source, bounds, label, formats) as (f, probe):
        fmt = probe.format
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                if verify:
                    probe.verify()
                    f.seek(0)
                    probe = Image.open(f, formats=(fmt,) if fmt else formats)
                scale = draft_scale(*probe.size, bounds.draft_pixels)
                if scale > 1 and fmt == "JPEG":
                    w, h = probe.size
                    probe.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
                probe.load()
                im = ImageOps.exif_transpose(probe) if exif_transpose else probe
                im = im.convert(mode) if mode and im.mode != mode else im
            except Image.DecompressionBombError as e:
                raise ImageError("too-large", f"{label}: image too large ({e})") from None
            except (OSError, SyntaxError, ValueError, EOFError, struct_error) as e:
                raise ImageError("corrupt", f"{label}: the {fmt or 'image'} data is truncated or corrupt ({e})"
                                 ) from None
    im.format = fmt  # kept through transposing and converting
    return im


__all__ = ["DEFAULT_BOUNDS", "ImageBounds", "ImageError", "check_size", "draft_scale", "image_size", "open_image"]
