"""Request limits of the HTTP service, in one config dataclass."""
from __future__ import annotations

from dataclasses import dataclass

from ..imaging import PIL_MAX_PIXELS, ImageBounds


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on what one request may ask for, and on what all requests together may hold.

    Each is checked before the expensive work it guards. ``max_upload_bytes`` bounds the
    request body (checked while it streams in); ``max_pixels`` and ``max_aspect`` bound an
    uploaded image's width x height and long/short side ratio, read from its header before
    any pixel is decoded, so a small file that inflates to gigabytes (a decompression bomb)
    or a 1 x 16,000,000 strip is refused without decoding it.

    Memory: at most ``decode_workers`` uploads are decoded at once (plus one over ``large_pixels``), and decoded uploads
    waiting for or inside a search hold at most ``decode_budget_mb`` MiB together (each is
    counted at 4 bytes a pixel from its header, before decoding); uploads beyond the budget
    wait their turn with their body spooled to disk. ``body_timeout_s`` drops a request whose
    body stalls (no bytes for that long, or not complete within ``body_deadline_s``);
    ``max_connections`` bounds open connections (more are answered 503).

    Expensive methods (``Method.expensive``) run on ``slow_workers`` threads of their own, at
    a lower CPU priority, with at most ``slow_queue`` searches waiting (more are answered 503),
    so cheap searches never queue behind them (``workers.py``).
    """

    max_upload_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_aspect: float = 20.0
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
    #: uploads decoded at the same time; uploads over ``large_pixels`` are decoded one at a time on a thread of
    #: their own, at a lower CPU priority, so small uploads never queue behind them
    decode_workers: int = 2
    large_pixels: int = 4_000_000
    #: MiB that decoded uploads in flight may hold together (4 bytes a pixel, counted from the header)
    decode_budget_mb: int = 512
    #: seconds a request body may stall between two reads, and seconds it may take in all
    body_timeout_s: float = 10.0
    body_deadline_s: float = 60.0
    #: open connections (and requests in progress) at most; more are answered 503
    max_connections: int = 64
    #: worker threads of the expensive methods' own queue, and searches that may wait in it
    slow_workers: int = 1
    slow_queue: int = 8

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_text_chars", "max_k", "default_k", "thumbnail_size",
                     "max_thumbnail_size", "max_id_chars", "model_workers", "max_batch", "decode_workers",
                     "decode_budget_mb", "max_connections", "slow_workers", "slow_queue", "large_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeLimits.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("body_timeout_s", "body_deadline_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServeLimits.{name} must be positive, got {getattr(self, name)}")
        if not self.max_aspect >= 1:
            raise ValueError(f"ServeLimits.max_aspect must be at least 1, got {self.max_aspect}")
        if self.default_k > self.max_k:
            raise ValueError(f"ServeLimits.default_k ({self.default_k}) exceeds max_k ({self.max_k})")
        if self.decode_cost(self.max_pixels) > self.decode_budget_mb * 1024 * 1024:
            raise ValueError(f"ServeLimits.decode_budget_mb ({self.decode_budget_mb}) is below what one image of "
                             f"max_pixels ({self.max_pixels}) holds decoded "
                             f"({-(-self.decode_cost(self.max_pixels) // (1024 * 1024))} MiB)")

    @staticmethod
    def decode_cost(pixels: int) -> int:
        """Bytes a decoded upload of ``pixels`` pixels is counted at (RGBA: 4 bytes a pixel)."""
        return 4 * pixels

    @property
    def image_bounds(self) -> ImageBounds:
        """Bounds for uploaded images."""
        return ImageBounds(max_pixels=self.max_pixels, max_aspect=self.max_aspect)

    @property
    def gallery_bounds(self) -> ImageBounds:
        """Bounds for the server's own gallery files (thumbnails): the library's pixel bound, the aspect bound."""
        return ImageBounds(max_pixels=max(self.max_pixels, PIL_MAX_PIXELS), max_aspect=self.max_aspect)
