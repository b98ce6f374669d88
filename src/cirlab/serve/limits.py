"""Request limits of the HTTP service, in one config dataclass."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on what one request may ask for; each is checked before the expensive work it guards.

    ``max_upload_bytes`` bounds the request body (checked while it streams in);
    ``max_pixels`` bounds an uploaded image's width x height, read from its header
    before any pixel is decoded, so a small file that inflates to gigabytes
    (a decompression bomb) is refused without allocating it.
    """

    max_upload_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_text_chars: int = 500
    max_k: int = 100
    default_k: int = 12
    thumbnail_size: int = 192
    max_thumbnail_size: int = 512
    max_id_chars: int = 256
    #: model computations running at the same time (each in a worker thread, off the event loop)
    model_workers: int = 2
    #: most searches answered in one batch
    max_batch: int = 32

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_text_chars", "max_k", "default_k", "thumbnail_size",
                     "max_thumbnail_size", "max_id_chars", "model_workers", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeLimits.{name} must be at least 1, got {getattr(self, name)}")
        if self.default_k > self.max_k:
            raise ValueError(f"ServeLimits.default_k ({self.default_k}) exceeds max_k ({self.max_k})")
