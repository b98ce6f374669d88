"""``t2i``: the world's non-oracle analog of a text-to-image model (a pixel proxy generator).

A real text-to-image model draws what a prompt says in its own style, not the target domain's, and gets
some of it wrong. ``TextToImageGenerator`` does the same on the built-in world:

- the prompt is the target description (``batch.extra["target_captions"]`` when the method made one,
  e.g. IP-CIR; else the ``captioner`` + ``rewriter`` it was given: the ``world`` nearest-caption
  captioner and the ``lexical`` rewriter by default), read as English with the lexical rewriter's
  reader; what it leaves unstated (a size, a place, a colour outside the palette) is chosen at random;
- it draws with the synth package's renderer in the **unadapted** generator style (``synth.world.UNADAPTED``:
  other background, shifted palette, smaller jittered objects, blur, noise; none of the world camera's
  texture, shading, tilt, occluders or clutter), so its images have the domain gap a real generator has;
- it makes the errors text-to-image models are known for, each with a rate (probability per image),
  seeded by the generator seed and the prompt:

  * ``binding`` (default 0.15): attribute binding: two objects of different colours swap their colours;
  * ``count`` (default 0.15): with at least ``many`` (default 3) objects, one is dropped or duplicated
    into a free place (even odds);
  * ``spatial`` (default 0.10): one object is drawn at a wrong place (a free one; two objects swap places
    when the layout is full).

Spec ``t2i:CAPTION_BANK[,binding=P,count=P,spatial=P,many=N,style=unadapted|real,rewriter=SPEC,
captioner=SPEC,max_captions=N,resolution=R]``. Not an oracle unless it is given an oracle part
(``rewriter=world``, ``captioner=oracle:...``, ``style=real``: the renderer that drew the gallery).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from ...backbones.base import Backbone
from ...errors import CirlabError
from ..base import QueryBatch
from ..generators import PROXY_GENERATORS
from ..lexical import PLACES, read_things
from .captioners import Captioner, NearestCaptionCaptioner
from .pixels import imagine_captions
from .rewriters import Rewriter, create_rewriter, parse_options


@dataclass(frozen=True)
class T2IErrors:
    """Per-image rates of the errors text-to-image models make (see the module doc)."""

    binding: float = 0.15
    count: float = 0.15
    spatial: float = 0.10
    many: int = 3

    def __post_init__(self) -> None:
        for name in ("binding", "count", "spatial"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise CirlabError(f"t2i: {name}={v}: a rate must be in [0, 1]")
        if self.many < 1:
            raise CirlabError(f"t2i: many={self.many}: must be >= 1")


NO_ERRORS = T2IErrors(0.0, 0.0, 0.0)


class TextToImageGenerator:
    """Target description -> an image in the generator's own style, with seeded text-to-image errors."""

    kind = "pixels"
    needs_pixels = False

    def __init__(self, captioner: Captioner, rewriter: Rewriter, errors: T2IErrors = T2IErrors(),
                 style: str = "unadapted", resolution: int = 64) -> None:
        from ...synth.world import REAL, UNADAPTED, WorldGenerator

        styles = {"unadapted": UNADAPTED, "real": REAL}
        if style not in styles:
            raise CirlabError(f"t2i: style={style!r}; use one of {', '.join(styles)}")
        self.captioner, self.rewriter, self.errors, self.style = captioner, rewriter, errors, style
        self.renderer = WorldGenerator(styles[style], resolution)
        self.made: dict[str, int] = {"binding": 0, "count": 0, "spatial": 0}

    @staticmethod
    def _obj(t: Any, cell: int, rng: random.Random) -> Any:
        from ...world.scene import COLOURS, SHAPES, SIZES, Obj

        return Obj(cell, t.shape or rng.choice(SHAPES), t.colour if t.colour in COLOURS else rng.choice(list(COLOURS)),
                   t.size or rng.choice(SIZES))

    def scene_of(self, description: str, rng: random.Random) -> Any:
        """The scene a description asks for, unstated details drawn from ``rng`` (``None``: nothing to draw)."""
        from ...world.scene import Scene

        objs: dict[int, Obj] = {}
        unplaced = []
        for t in read_things(description):
            cell = PLACES.index(t.place) if t.place is not None else None
            if cell is None or cell in objs:
                unplaced.append(t)
                continue
            objs[cell] = self._obj(t, cell, rng)
        for t in unplaced:
            free = [c for c in range(len(PLACES)) if c not in objs]
            if free:
                cell = rng.choice(free)
                objs[cell] = self._obj(t, cell, rng)
        return Scene.of(objs.values()) if objs else None

    def corrupt(self, scene: Any, rng: random.Random) -> tuple[Any, list[str]]:
        """``scene`` with this generator's errors (each drawn with its rate); the names of those made."""
        from ...world.scene import Obj, Scene

        e, made = self.errors, []
        objs = list(scene.objects)
        if rng.random() < e.binding:
            pairs = [(a, b) for i, a in enumerate(objs) for b in objs[i + 1:] if a.colour != b.colour]
            if pairs:
                a, b = rng.choice(pairs)
                objs = [Obj(o.cell, o.shape, b.colour, o.size) if o == a else
                        Obj(o.cell, o.shape, a.colour, o.size) if o == b else o for o in objs]
                made.append("binding")
        if rng.random() < e.count and len(objs) >= e.many:
            free = [c for c in range(len(PLACES)) if c not in {o.cell for o in objs}]
            o = rng.choice(objs)
            if free and rng.random() < 0.5:
                objs.append(Obj(rng.choice(free), o.shape, o.colour, o.size))
            else:
                objs.remove(o)
            made.append("count")
        if rng.random() < e.spatial and objs:
            free = [c for c in range(len(PLACES)) if c not in {o.cell for o in objs}]
            o = rng.choice(objs)
            if free:
                objs = [Obj(rng.choice(free), o.shape, o.colour, o.size) if x == o else x for x in objs]
            elif len(objs) > 1:
                other = rng.choice([x for x in objs if x != o])
                objs = [Obj(other.cell, x.shape, x.colour, x.size) if x == o else
                        Obj(o.cell, x.shape, x.colour, x.size) if x == other else x for x in objs]
            made.append("spatial")
        for m in made:
            self.made[m] += 1
        return Scene.of(objs), made

    def draw(self, description: str, seed: int = 0) -> Image.Image:
        from ...world.generate import hash_seed

        rng = random.Random(hash_seed(seed, "t2i:" + description))
        scene = self.scene_of(description, rng)
        if scene is None:   # nothing drawable: an empty canvas, as a model that ignored the prompt
            return Image.new("RGB", (self.renderer.resolution,) * 2, self.renderer.style.background)
        self.renderer.seed = seed
        return self.renderer.render(self.corrupt(scene, rng)[0], description)

    def generate(self, batch: QueryBatch, seed: int = 0) -> list[Image.Image]:
        _, targets = imagine_captions(batch, self.captioner, self.rewriter)
        return [self.draw(t, seed) for t in targets]

    def config(self) -> dict[str, Any]:
        out = {"name": "t2i", "analog": True, "style": self.style, "errors": asdict(self.errors),
               "resolution": self.renderer.resolution, "captioner": self.captioner.config(),
               "rewriter": self.rewriter.config()}
        if self.style == "real":
            out["oracle"] = "draws in the style of the renderer that drew the gallery"
        return out


@PROXY_GENERATORS.register("t2i", help="WORLD ANALOG of a text-to-image model (not an oracle): draws the target "
                                       "description in the unadapted generator style with binding/count/spatial "
                                       "errors; t2i:TRAIN_DIR[,binding=0.15,count=0.15,spatial=0.1,rewriter=lexical]")
def _t2i(arg: str, backbone: Backbone) -> TextToImageGenerator:
    from .captioners import create_captioner

    src, opts = parse_options(arg, {"binding": float, "count": float, "spatial": float, "many": int, "style": str,
                                    "rewriter": str, "captioner": str, "max_captions": int, "resolution": int}, "t2i")
    if not src:
        raise CirlabError("t2i: give the caption bank (the world's train split), e.g. t2i:/data/world/train")
    errors = T2IErrors(**{k: opts.pop(k) for k in ("binding", "count", "spatial", "many") if k in opts})
    other, max_captions = opts.pop("captioner", None), opts.pop("max_captions", 0)
    cap = create_captioner(other, backbone) if other else NearestCaptionCaptioner(backbone, src, max_captions)
    return TextToImageGenerator(cap, create_rewriter(opts.pop("rewriter", "lexical")), errors, **opts)


__all__ = ["NO_ERRORS", "T2IErrors", "TextToImageGenerator"]
