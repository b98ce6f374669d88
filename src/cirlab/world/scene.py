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


@dataclass(frozen=True)
class Effects:
    """What the world's camera adds to a drawing, outside every ``Style`` parameter a generator has.

    ``texture``: chance that an object is striped; ``shading``: strength of a light gradient across
    the image (fraction of full brightness); ``perspective``: largest rotation/shear of the image
    plane (radians); ``occlusion``: chance that a dark bar covers part of one object; ``clutter``:
    most specks and strokes on the background. All zero (the default): a flat drawing.
    """

    texture: float = 0.0
    shading: float = 0.0
    perspective: float = 0.0
    occlusion: float = 0.0
    clutter: int = 0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def any(self) -> bool:
        return any(getattr(self, k) for k in self.__dataclass_fields__)


NO_EFFECTS = Effects()
#: the 'real' camera of the world's splits; no generator reproduces it (the real-vs-synthetic gap)
REAL_EFFECTS = Effects(texture=0.4, shading=0.12, perspective=0.05, occlusion=0.15, clutter=5)
OCCLUDER = (70, 58, 46)


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


def _clutter(draw: ImageDraw.ImageDraw, s: int, n: int, background: tuple[int, int, int], rng: random.Random) -> None:
    for _ in range(rng.randint(0, n)):
        tone = tuple(max(0, c - rng.randint(25, 60)) for c in background)
        x, y = rng.uniform(0, s), rng.uniform(0, s)
        if rng.random() < 0.5:
            r = rng.uniform(0.5, 1.5) * s / 96
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tone)
        else:
            a = rng.uniform(0, math.pi)
            ln = rng.uniform(0.04, 0.12) * s
            draw.line([x, y, x + ln * math.cos(a), y + ln * math.sin(a)], fill=tone, width=max(1, s // 96))


def _stripes(img: Image.Image, o: "Obj", cx: float, cy: float, r: float, fill: tuple[int, int, int],
             rng: random.Random) -> None:
    """Stripe the object drawn at (cx, cy) with radius r, in a darker tone of its fill (its box only)."""
    x0, y0 = int(max(0, cx - r - 1)), int(max(0, cy - r - 1))
    x1, y1 = int(min(img.size[0], cx + r + 2)), int(min(img.size[1], cy + r + 2))
    w, h = x1 - x0, y1 - y0
    if w <= 2 or h <= 2:
        return
    mask = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask)
    lx, ly = cx - x0, cy - y0
    if o.shape == "circle":
        md.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
    elif o.shape == "square":
        md.rectangle([lx - r * 0.85, ly - r * 0.85, lx + r * 0.85, ly + r * 0.85], fill=255)
    else:
        md.polygon(_shape_points(o.shape, lx, ly, r), fill=255)
    stripes = Image.new("L", (w, h), 0)
    sd = ImageDraw.Draw(stripes)
    period = max(2, int(rng.uniform(0.035, 0.06) * img.size[0]))
    width = max(1, int(period * 0.4))
    if rng.random() < 0.5:
        for k in range(-h, w + h, period):
            sd.line([k, 0, k + h, h], fill=255, width=width)
    else:
        for k in range(0, h, period):
            sd.line([0, k, w, k], fill=255, width=width)
    from PIL import ImageChops

    tone = tuple(int(c * 0.72) for c in fill)
    region = img.crop((x0, y0, x1, y1))
    region.paste(tone, mask=ImageChops.multiply(stripes, mask))
    img.paste(region, (x0, y0))


def _shade(img: Image.Image, strength: float, rng: random.Random) -> Image.Image:
    import numpy as np

    arr = np.asarray(img).astype(np.float32)
    s = arr.shape[0]
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / max(1, s - 1) - 0.5
    ramp = (xx * math.cos(a) + yy * math.sin(a)) * 2  # -1 .. 1 roughly
    arr *= (1.0 - strength * 0.5 * (ramp + 1.0))[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _tilt(img: Image.Image, amount: float, background: tuple[int, int, int], rng: random.Random) -> Image.Image:
    s = img.size[0]
    rot, shx, shy = (rng.uniform(-amount, amount) for _ in range(3))
    c, si = math.cos(rot), math.sin(rot)
    m = [c + shx, -si, 0.0, si, c + shy, 0.0]
    m[2] = s / 2 - m[0] * s / 2 - m[1] * s / 2
    m[5] = s / 2 - m[3] * s / 2 - m[4] * s / 2
    return img.transform(img.size, Image.AFFINE, m, resample=Image.BILINEAR, fillcolor=background)


def render(scene: Scene, resolution: int = 64, style: Style = DEFAULT_STYLE,
           rng: random.Random | None = None, supersample: int = 3, effects: Effects = NO_EFFECTS,
           effects_rng: random.Random | None = None) -> Image.Image:
    """Draw a scene. ``rng`` drives the style's random parts (jitter, noise); ``effects_rng`` the camera ``effects``."""
    s = resolution * supersample
    img = Image.new("RGB", (s, s), style.background)
    draw = ImageDraw.Draw(img)
    cell = s / GRID
    if effects.any and effects_rng is None:
        raise ValueError("render: effects need an effects_rng")
    fx = effects_rng if effects.any else None
    if fx is not None and effects.clutter:
        _clutter(draw, s, effects.clutter, style.background, fx)
    occluded = fx.randrange(len(scene.objects)) if fx is not None and scene.objects and \
        fx.random() < effects.occlusion else -1
    for n, o in enumerate(scene.objects):
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
        if fx is not None and effects.texture and fx.random() < effects.texture:
            _stripes(img, o, cx, cy, r, fill, fx)
        if n == occluded and fx is not None:
            side = fx.choice((-1, 1))
            w, h = r * fx.uniform(0.5, 0.9), r * fx.uniform(0.25, 0.4)
            ox, oy = cx + side * r * 0.75, cy + fx.uniform(-0.5, 0.5) * r
            draw.rectangle([ox - w / 2, oy - h / 2, ox + w / 2, oy + h / 2], fill=OCCLUDER)
    if fx is not None and effects.perspective:
        img = _tilt(img, effects.perspective, style.background, fx)
    if fx is not None and effects.shading:
        img = _shade(img, effects.shading, fx)
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


__all__ = ["CELLS", "COLOURS", "DEFAULT_STYLE", "Effects", "NO_EFFECTS", "REAL_EFFECTS", "GRID", "MAX_OBJECTS", "Obj", "SHAPES", "SIZES", "Scene", "Style",
           "caption", "describe_object", "random_object", "random_scene", "render", "with_style"]
