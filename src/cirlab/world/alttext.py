"""Alt-text for the world's images: partial, varied and noisy, as web captions are.

A CLIP learns its language prior from alt-text, not from exhaustive scene descriptions. Each
image of the world gets several captions drawn from these registers:

- ``partial``: some of the objects, each with some of its attributes ("a red circle", "a large
  star", "a green thing at the top"), in a random order;
- ``count``: how many shapes, or how many of a kind ("three shapes", "two circles and a star");
- ``relation``: two objects and where one is relative to the other ("a red circle above a blue
  star", "a square next to a diamond");
- ``full``: the complete description (rare, as a long alt-text is);
- ``chatter``: web noise around one or two object mentions, in words people also use when they
  ask for an edit (fillers, verbs, politeness), so the text tower has seen every word of the
  query texts without ever seeing a query.

Frames ("a picture of", "clipart", "#shapes") and label noise (a wrong colour, a dropped word)
come on top. A caption mentions one image only: no triplets, no text pairing two images.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

from .scene import CELLS, COLOURS, GRID, Obj, Scene, caption
from .phrasing import NUMBERS, template_words

#: words of the procedural edit texts (``world.edits``) that are not object words, and of the method prompts
EDIT_WORDS = ("that photo picture image with which " "add put insert place anywhere somewhere also show to an empty spot remove take away delete get rid of "
              "without make change colour paint turn should be into replace with enlarge bigger larger smaller "
              "shrink move another different else shift then the a and in at of").split()
FRAMES = ("", "", "", "a picture of ", "image of ", "photo: ", "clipart ", "drawing of ", "stock image - ",
          "illustration with ")
TAILS = ("", "", "", " on a light background", " #shapes", " | free download", " thanks for looking", " (vector)",
         " hd", " lol", "; vector art")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds", "star": "stars"}
REGISTER_WEIGHTS = {"partial": 0.38, "count": 0.14, "relation": 0.18, "full": 0.08, "chatter": 0.22}


def chatter_words() -> list[str]:
    """Words the chatter register scatters around object mentions (every non-object query word)."""
    return sorted(set(EDIT_WORDS) | template_words())


def _mention(o: Obj, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.38:
        s = f"{o.colour} {o.shape}"
    elif r < 0.56:
        s = f"{o.size} {o.colour} {o.shape}"
    elif r < 0.7:
        s = o.shape
    elif r < 0.82:
        s = f"{o.size} {o.shape}"
    else:
        s = f"{o.colour} {rng.choice(('thing', 'shape', 'one'))}"
    if rng.random() < 0.2:
        s += " in the center" if CELLS[o.cell] == "center" else f" at the {CELLS[o.cell]}"
    return "a " + s


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _relation(a: Obj, b: Obj) -> str:
    ra, ca = divmod(a.cell, GRID)
    rb, cb = divmod(b.cell, GRID)
    if ca == cb:
        return "above" if ra < rb else "below"
    if ra == rb:
        return "left of" if ca < cb else "right of"
    return "next to" if abs(ra - rb) + abs(ca - cb) <= 2 else "far from"


def alt_text(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """One alt-text for ``scene`` and its register."""
    objs = list(scene.objects)
    register = rng.choices(list(REGISTER_WEIGHTS), list(REGISTER_WEIGHTS.values()))[0]
    if register == "relation" and len(objs) < 2:
        register = "partial"
    if register == "partial":
        k = rng.randint(1, len(objs))
        text = _join([_mention(o, rng) for o in rng.sample(objs, k)])
    elif register == "count":
        by_shape: dict[str, int] = {}
        for o in objs:
            by_shape[o.shape] = by_shape.get(o.shape, 0) + 1
        if rng.random() < 0.5:
            text = f"{NUMBERS[len(objs)]} {'shape' if len(objs) == 1 else 'shapes'}"
            if rng.random() < 0.5:
                text += " including " + _mention(rng.choice(objs), rng)
        else:
            text = _join([f"{NUMBERS[n]} {PLURAL[s] if n > 1 else s}" if n > 1 else f"a {s}"
                          for s, n in rng.sample(sorted(by_shape.items()), len(by_shape))])
    elif register == "relation":
        a, b = rng.sample(objs, 2)
        text = f"{_mention(a, rng)} {_relation(a, b)} {_mention(b, rng)}"
    elif register == "full":
        text = caption(scene, rng)
    else:
        words = chatter_words()
        mention = _join([_mention(o, rng) for o in rng.sample(objs, min(len(objs), rng.randint(1, 2)))])
        before = " ".join(rng.choice(words) for _ in range(rng.randint(0, 4)))
        after = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        text = " ".join(x for x in (before, mention, after) if x)
    words_ = text.split()
    noise = rng.random()
    if noise < 0.04 and len(words_) > 2:  # a dropped word
        del words_[rng.randrange(len(words_))]
    elif noise < 0.08:  # a wrong colour, as in a careless caption
        colours = [i for i, w in enumerate(words_) if w in COLOURS]
        if colours:
            words_[rng.choice(colours)] = rng.choice(list(COLOURS))
    text = " ".join(words_)
    if register != "chatter":
        text = rng.choice(FRAMES) + text + rng.choice(TAILS)
    return re.sub(r"\ba ([aeiou])", r"an \1", text), register


def alt_texts(scene: Scene, rng: random.Random, n: int) -> list[str]:
    """``n`` alt-texts for one image (registers drawn independently)."""
    return [alt_text(scene, rng)[0] for _ in range(n)]


def alt_corpus(scenes: Sequence[Scene], seed: int, per_image: int) -> list[list[str]]:
    """Alt-texts for every scene, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [alt_texts(s, rng, per_image) for s in scenes]


__all__ = ["EDIT_WORDS", "REGISTER_WEIGHTS", "alt_corpus", "alt_text", "alt_texts", "chatter_words"]
