"""Scenes of the built-in world: up to five objects on a 3x3 grid, and how to draw and describe them.

An object is (shape, colour, size, cell); a scene is a set of objects in distinct
cells, kept sorted by cell so equal scenes compare and hash equal.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFilter

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "cyan": (40, 200, 210),
    "orange": (245, 140, 30),
    "gray": (128, 128, 128),
}
SIZES: tuple[str, ...] = ("small", "large")
GRID = 3
CELLS: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                          "bottom left", "bottom", "bottom right")
MAX_OBJECTS = 5


@dataclass(frozen=True, order=True)
class Obj:
    cell: int
    shape: str
    colour: str
    size: str

    @property
    def where(self) -> str:
        return CELLS[self.cell]

    def noun(self, size: bool = True) -> str:
        return f"{self.size + ' ' if size else ''}{self.colour} {self.shape}"

    def to_list(self) -> list:
        return [self.shape, self.colour, self.size, self.cell]

    @staticmethod
    def from_list(v: Sequence) -> "Obj":
        shape, colour, size, cell = v
        return Obj(int(cell), str(shape), str(colour), str(size))


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    @staticmethod
    def of(objs: Iterable[Obj]) -> "Scene":
        objs = tuple(sorted(objs))
        cells = [o.cell for o in objs]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {objs}")
        return Scene(objs)

    @property
    def key(self) -> str:
        return ";".join(f"{o.cell}{o.shape[:2]}{o.colour[:3]}{o.size[0]}" for o in self.objects)

    def free_cells(self) -> list[int]:
        used = {o.cell for o in self.objects}
        return [c for c in range(GRID * GRID) if c not in used]

    def at(self, cell: int) -> Obj | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def replace_obj(self, old: Obj, new: Obj | None) -> "Scene":
        rest = [o for o in self.objects if o != old]
        return Scene.of(rest + ([new] if new is not None else []))

    def add(self, new: Obj) -> "Scene":
        return Scene.of(list(self.objects) + [new])

    def to_list(self) -> list:
        return [o.to_list() for o in self.objects]

    @staticmethod
    def from_list(v: Sequence) -> "Scene":
        return Scene.of(Obj.from_list(o) for o in v)

    def combos(self) -> set[tuple[str, str]]:
        return {(o.colour, o.shape) for o in self.objects}


def random_object(rng: random.Random, cell: int, banned: frozenset[tuple[str, str]] = frozenset()) -> Obj:
    while True:
        o = Obj(cell, rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))
        if (o.colour, o.shape) not in banned:
            return o


def random_scene(rng: random.Random, n_min: int = 1, n_max: int = MAX_OBJECTS,
                 banned: frozenset[tuple[str, str]] = frozenset()) -> Scene:
    n = rng.randint(n_min, n_max)
    cells = rng.sample(range(GRID * GRID), n)
    return Scene.of(random_object(rng, c, banned) for c in cells)


# ---- describing -------------------------------------------------------------------------------

def describe_object(o: Obj) -> str:
    prep = "in the" if o.where == "center" else "at the"
    return f"a {o.size} {o.colour} {o.shape} {prep} {o.where}"


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """A full description; with ``rng`` the objects come in a random order and phrasing."""
    objs = list(scene.objects)
    if rng is not None:
        rng.shuffle(objs)
    parts = [describe_object(o) for o in objs]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if rng is None:
        return body
    lead = rng.choice(["", "there is ", "a picture of ", "an image with "])
    return (lead + body) if lead != "there is " or len(parts) == 1 else "there are " + body


# ---- drawing ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Style:
    """How a scene is drawn. The default is the 'real' world; generators shift it (DAIG)."""

    background: tuple[int, int, int] = (236, 236, 236)
    colour_shift: tuple[int, int, int] = (0, 0, 0)  # added to every object colour
    jitter: float = 0.0                              # max centre offset, fraction of a cell
    scale: float = 1.0                               # object size multiplier
    noise: float = 0.0                               # std of pixel noise (0-255 scale)
    blur: float = 0.0                                # Gaussian blur radius in pixels
    outline: bool = False

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


DEFAULT_STYLE = Style()


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise ValueError(shape)


def render(scene: Scene, resolution: int = 64, style: Style = DEFAULT_STYLE,
           rng: random.Random | None = None, supersample: int = 3) -> Image.Image:
    """Draw a scene. ``rng`` drives the style's random parts (jitter, noise)."""
    s = resolution * supersample
    img = Image.new("RGB", (s, s), style.background)
    draw = ImageDraw.Draw(img)
    cell = s / GRID
    for o in scene.objects:
        row, col = divmod(o.cell, GRID)
        cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
        if style.jitter and rng is not None:
            cx += rng.uniform(-1, 1) * style.jitter * cell
            cy += rng.uniform(-1, 1) * style.jitter * cell
        r = cell * (0.42 if o.size == "large" else 0.22) * style.scale
        fill = tuple(max(0, min(255, c + d)) for c, d in zip(COLOURS[o.colour], style.colour_shift))
        outline = (30, 30, 30) if style.outline else None
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline)
        elif o.shape == "square":
            q = r * 0.85
            draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill, outline=outline)
        else:
            draw.polygon(_shape_points(o.shape, cx, cy, r), fill=fill, outline=outline)
    img = img.resize((resolution, resolution), Image.BOX)
    if style.blur:
        img = img.filter(ImageFilter.GaussianBlur(style.blur))
    if style.noise and rng is not None:
        import numpy as np

        arr = np.asarray(img).astype(np.float32)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, style.noise, arr.shape)
        img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    return img


def with_style(style: Style, **changes) -> Style:
    return replace(style, **changes)


__all__ = ["CELLS", "COLOURS", "DEFAULT_STYLE", "GRID", "MAX_OBJECTS", "Obj", "SHAPES", "SIZES", "Scene", "Style",
           "caption", "describe_object", "random_object", "random_scene", "render", "with_style"]
