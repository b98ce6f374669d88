"""World-view generation (PrediCIR): a random crop of an image is the *source view*,
its caption is the *action*, the full image is the *target view*.

Geometry lives on the backbone's patch grid (``grid`` x ``grid`` patches of
``patch`` pixels): a crop box is a patch-aligned rectangle inside the image, the
source view keeps the pixels inside the box where they are and fills everything
outside with a fill colour, and the *masked* patches, whose target latents the
predictor must supply, are exactly the patches outside the box. Patch ``r * grid + c``
is row ``r``, column ``c`` (the order of ``forward_image_tokens``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import CirlabError


@dataclass(frozen=True)
class CropBox:
    """A patch-aligned box: ``top``/``left`` corner and ``height``/``width``, all in patches."""

    top: int
    left: int
    height: int
    width: int

    def check(self, grid: int) -> None:
        if self.height < 1 or self.width < 1 or self.top < 0 or self.left < 0 \
                or self.top + self.height > grid or self.left + self.width > grid:
            raise CirlabError(f"crop box {self} does not lie inside a {grid}x{grid} patch grid")

    def pixels(self, patch: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) in pixels, end-exclusive."""
        return (self.top * patch, self.left * patch, (self.top + self.height) * patch,
                (self.left + self.width) * patch)

    def visible(self, grid: int) -> torch.Tensor:
        """(grid*grid,) bool: True for the patches inside the box."""
        self.check(grid)
        m = torch.zeros(grid, grid, dtype=torch.bool)
        m[self.top:self.top + self.height, self.left:self.left + self.width] = True
        return m.flatten()

    def masked_indices(self, grid: int) -> list[int]:
        """Indices of the patches outside the box (the ones to predict)."""
        return (~self.visible(grid)).nonzero().flatten().tolist()

    @staticmethod
    def full(grid: int) -> CropBox:
        return CropBox(0, 0, grid, grid)


@dataclass
class ViewConfig:
    """How source views are drawn: crop side as a fraction of the image side, and how often the whole image."""

    min_side: float = 0.35
    max_side: float = 0.8
    full_view_prob: float = 0.15  # the query-time case: the whole reference is the source
    fill: str = "border"          # "border": median colour of the image border; "zero": 0 after normalisation

    def __post_init__(self) -> None:
        if not 0 < self.min_side <= self.max_side <= 1:
            raise CirlabError(f"view config: need 0 < min_side <= max_side <= 1, got {self.min_side}, {self.max_side}")
        if not 0 <= self.full_view_prob <= 1:
            raise CirlabError(f"view config: full_view_prob must be in [0, 1], got {self.full_view_prob}")
        if self.fill not in ("border", "zero"):
            raise CirlabError(f"view config: fill {self.fill!r}: use 'border' or 'zero'")


def sample_crop(grid: int, cfg: ViewConfig, gen: torch.Generator) -> CropBox:
    """A random patch-aligned crop box; sides in ``[ceil(min_side*grid), floor(max_side*grid)]`` patches."""
    if float(torch.rand((), generator=gen)) < cfg.full_view_prob:
        return CropBox.full(grid)
    lo = max(1, math.ceil(cfg.min_side * grid - 1e-9))
    hi = max(lo, math.floor(cfg.max_side * grid + 1e-9))
    h, w = (int(torch.randint(lo, hi + 1, (), generator=gen)) for _ in range(2))
    top = int(torch.randint(0, grid - h + 1, (), generator=gen))
    left = int(torch.randint(0, grid - w + 1, (), generator=gen))
    return CropBox(top, left, h, w)


def fill_values(pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, C) fill colour per image: the median of its border pixels, or zeros."""
    if mode == "zero":
        return pixels.new_zeros(pixels.shape[:2])
    border = torch.cat([pixels[:, :, 0, :], pixels[:, :, -1, :], pixels[:, :, :, 0], pixels[:, :, :, -1]], dim=2)
    return border.median(dim=2).values


def _inside(boxes: list[CropBox], rows: int, cols: int, unit: int, device: torch.device | None = None
            ) -> torch.Tensor:
    """(B, rows, cols) bool: True inside each box, its coordinates (in patches) times ``unit``."""
    b = torch.tensor([[x.top, x.left, x.top + x.height, x.left + x.width] for x in boxes],
                     dtype=torch.long, device=device).reshape(-1, 4) * unit
    r = torch.arange(rows, device=device)
    c = torch.arange(cols, device=device)
    in_r = (r[None] >= b[:, 0:1]) & (r[None] < b[:, 2:3])
    in_c = (c[None] >= b[:, 1:2]) & (c[None] < b[:, 3:4])
    return in_r[:, :, None] & in_c[:, None, :]


def source_views(pixels: torch.Tensor, boxes: list[CropBox], patch: int, fill: str = "border") -> torch.Tensor:
    """(B, C, H, W) preprocessed images -> source views: inside each box unchanged, outside the fill colour."""
    if len(boxes) != len(pixels):
        raise CirlabError(f"{len(boxes)} crop boxes for {len(pixels)} images")
    keep = _inside(boxes, pixels.shape[2], pixels.shape[3], patch, pixels.device).unsqueeze(1)
    fillv = fill_values(pixels, fill)[:, :, None, None].to(pixels.dtype)
    return torch.where(keep, pixels, fillv)


def visible_masks(boxes: list[CropBox], grid: int) -> torch.Tensor:
    """(B, grid*grid) bool, True inside each box."""
    for box in boxes:
        box.check(grid)
    return _inside(boxes, grid, grid, 1).flatten(1)


__all__ = ["CropBox", "ViewConfig", "fill_values", "sample_crop", "source_views", "visible_masks"]
