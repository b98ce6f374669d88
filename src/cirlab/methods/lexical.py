"""A rewriter that reads English, not the world's grammar: the world's non-oracle analog of an LLM rewrite.

``LexicalRewriter`` (rewriter spec ``lexical``) gets what a real LLM gets: a description of the reference
(a caption, e.g. the ``world`` captioner's nearest train caption) and the human modification text, in
any register. It knows general English vocabulary only: colour, shape, size and place words (with a
few synonyms: grey, violet, teal, ball, box, big, tiny, middle, upper, lower ...), cues of removal
(remove, delete, without, no, none, lose, minus, take away, get rid of, drop), of replacement (instead
of, swap, replace, turn, make, is, should be), of addition (add, put, insert, place, throw in, include)
and of keeping only some objects (only, just, nothing but). It reads object mentions ("the red one",
"a large blue star at the top left") with its own small lexicon, and applies each clause of the text:

- a clause with a definite mention ("the red circle", "the star", "the red one", "its circle") changes
  that object: removed after a removal cue, else it takes every attribute the clause names outside the
  mention (a colour word, the shape of an indefinite mention, a size word or cue such as "blow up", a
  place, "somewhere else"); an ambiguous mention is resolved to the first match in reading order;
- a clause with only an indefinite mention ("a blue star at the top", describing texts) is trusted as
  a statement about the target: an object of that colour and shape takes the stated size and place; an
  object at the stated place takes the stated colour/shape; else the object is added (a place it does
  not state stays unstated: the text-to-image model chooses);
- "only / just / nothing but" keeps the listed objects and drops the others.

It is deliberately simple, and wrong the ways a cheap LLM is: it trusts a wrong reference caption, picks
the first of two objects a loose reference fits, cannot tell which object a describing text without a
place means when several fit, leaves unstated sizes and places unstated. Its accuracy per register is
measured in ``docs/ip-cir.md``.

This module imports nothing of the world (``cirlab.world``, ``cirlab.synth``): its whole import closure
is the standard library and ``cirlab.errors``, so it cannot replay the grammar that generated the queries
(``tests/test_lexical.py`` checks it in a fresh interpreter).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

COLOUR_WORDS = {"red": "red", "green": "green", "blue": "blue", "yellow": "yellow", "purple": "purple",
                "violet": "purple", "cyan": "cyan", "teal": "cyan", "turquoise": "cyan", "orange": "orange",
                "gray": "gray", "grey": "gray", "pink": "pink", "brown": "brown", "black": "black", "white": "white"}
SHAPE_WORDS = {"circle": "circle", "ball": "circle", "disc": "circle", "disk": "circle", "dot": "circle",
               "square": "square", "box": "square", "block": "square", "triangle": "triangle",
               "diamond": "diamond", "rhombus": "diamond", "star": "star"}
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "smaller": "small", "large": "large",
              "big": "large", "huge": "large", "bigger": "large", "larger": "large"}
SIZE_CUES = {"blow up": "large", "enlarge": "large", "grow": "large", "shrink": "small"}
#: places on a 3 x 3 layout, in reading order; synonyms map onto them
PLACES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
PLACE_WORDS = {**{p: p for p in PLACES}, "upper left": "top left", "upper right": "top right",
               "lower left": "bottom left", "lower right": "bottom right", "centre": "center", "middle": "center"}
GENERIC_NOUNS = ("one", "shape", "thing", "object")
REMOVE = r"\b(?:remove|delete|without|no|none|lose|minus|drop|erase|take away|get rid of)\b"
ADD = r"\b(?:add|put|insert|place|throw in|include|also show|but with an?)\b"
ONLY = r"\b(?:only|just|nothing but)\b"
ELSEWHERE = r"\b(?:somewhere else|elsewhere|another place|a different spot|a different place|somewhere|anywhere)\b"


def _alt(words: Any) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


_MENTION = re.compile(rf"\b(?:(?P<det>the|its|an?|no)\s+)?(?:(?P<size>{_alt(SIZE_WORDS)})\s+)?"
                      rf"(?:(?P<colour>{_alt(COLOUR_WORDS)})\s+)?(?P<noun>{_alt(SHAPE_WORDS)}|{_alt(GENERIC_NOUNS)})\b")
_PLACE = re.compile(rf"\bthe (?P<place>{_alt(PLACE_WORDS)})\b")
_OTHER_THAN = re.compile(rf"\bsomewhere other than (?:at |in )?the (?P<place>{_alt(PLACE_WORDS)})\b")
_INSTEAD = re.compile(rf"\binstead of (?:the )?(?P<c>{_alt(COLOUR_WORDS)})\b(?! (?:{_alt(SHAPE_WORDS)}|one))")
_SPLIT = re.compile(r"\s*(?:;|,\s*(?:then|also|and)?|\b(?:and also|oh and|and|plus|then|next to)\b)\s*")


@dataclass(frozen=True)
class Thing:
    """An object as a text names it; an attribute the text does not state is ``None``."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    place: str | None = None

    def phrase(self) -> str:
        words = " ".join(w for w in (self.size, self.colour, self.shape or "shape") if w)
        where = "" if self.place is None else f" {'in' if self.place == 'center' else 'at'} the {self.place}"
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}{where}"


@dataclass
class Mention:
    thing: Thing
    definite: bool
    start: int
    end: int


def _mentions(text: str) -> list[Mention]:
    out = []
    for m in _MENTION.finditer(text):
        generic = m.group("noun") in GENERIC_NOUNS
        if generic and not (m.group("colour") or m.group("size")):
            continue
        thing = Thing(None if generic else SHAPE_WORDS[m.group("noun")], COLOUR_WORDS.get(m.group("colour") or ""),
                      SIZE_WORDS.get(m.group("size") or ""))
        out.append(Mention(thing, m.group("det") in ("the", "its"), m.start(), m.end()))
    return out


def _places(text: str) -> list[tuple[str, int, int]]:
    return [(PLACE_WORDS[m.group("place")], m.start(), m.end()) for m in _PLACE.finditer(text)]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9,;]+", " ", text.lower().replace("-", " ")).split())


def read_things(text: str) -> list[Thing]:
    """Every object a description mentions, with the place that follows its mention."""
    low = normalise(text)
    mentions, places = _mentions(low), _places(low)
    things = []
    for n, m in enumerate(mentions):
        nxt = mentions[n + 1].start if n + 1 < len(mentions) else len(low)
        place = next((p for p, s, _ in places if m.end <= s < nxt), None)
        things.append(replace(m.thing, place=place))
    return things


def describe(things: list[Thing]) -> str:
    """"a large red circle at the top left, ... and a small blue star in the center" (reading order)."""
    order = sorted(things, key=lambda t: PLACES.index(t.place) if t.place in PLACES else len(PLACES))
    parts = [t.phrase() for t in order]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _fits(t: Thing, want: Thing) -> bool:
    return all(getattr(want, a) is None or getattr(t, a) == getattr(want, a) for a in ("shape", "colour", "size"))


@dataclass
class LexicalStats:
    queries: int = 0
    clauses: int = 0
    ignored_clauses: int = 0       # read no change from them
    unresolved: int = 0            # named an object the reference description does not have
    examples: list[str] = field(default_factory=list)


class LexicalRewriter:
    """Rewrites a reference description with a modification text, reading both as English (see module doc)."""

    def __init__(self) -> None:
        self.stats = LexicalStats()

    # -- resolving and changing objects ------------------------------------------------------------

    @staticmethod
    def _resolve(scene: list[Thing], want: Thing, place: str | None) -> Thing | None:
        fits = [t for t in scene if _fits(t, want)]
        at = [t for t in fits if place is not None and t.place == place]
        return (at or fits or [None])[0]

    @staticmethod
    def _free(scene: list[Thing], but: str | None = None) -> list[str]:
        used = {t.place for t in scene}
        return [p for p in PLACES if p not in used and p != but]

    def _set(self, scene: list[Thing], old: Thing, new: Thing) -> list[Thing]:
        if new.place != old.place and any(t.place == new.place for t in scene if t is not old):
            return scene   # the place is taken: nothing sensible to write
        return [new if t is old else t for t in scene]

    # -- one clause --------------------------------------------------------------------------------

    def _clause(self, scene: list[Thing], clause: str, keep: list[Thing] | None) -> list[Thing] | None:
        """The scene after one clause (``None``: the clause said nothing this reader could apply)."""
        other_than = _OTHER_THAN.search(clause)
        away_from = PLACE_WORDS[other_than.group("place")] if other_than else None
        text = _OTHER_THAN.sub(" somewhere ", clause)
        elsewhere = re.search(ELSEWHERE, text) is not None
        mentions, places = _mentions(text), _places(text)
        instead = _INSTEAD.search(text)
        definite = next((m for m in mentions if m.definite), None)
        if definite is None and instead is not None:   # "blue instead of red": the object is named by colour
            s, e = instead.span("c")
            definite = Mention(Thing(colour=COLOUR_WORDS[instead.group("c")]), True, s, e)
        if keep is not None:       # inside "only ...": every mention is kept
            for m in mentions:
                t = self._resolve([x for x in scene if x not in keep], m.thing, None)
                if t is not None:
                    keep.append(t)
            return scene
        if definite is not None:
            return self._change(scene, text, definite, mentions, places, elsewhere, away_from)
        if not mentions:
            return None
        removing = re.search(REMOVE, text) is not None
        # "there": at the place of something the reference has, not a new object
        adding = re.search(ADD, text) is not None and re.search(r"\bthere\b", text) is None
        out: list[Thing] | None = None
        for n, m in enumerate(mentions):
            nxt = mentions[n + 1].start if n + 1 < len(mentions) else len(text)
            place = next((p for p, s, _ in places if m.end <= s < nxt), None)
            cur = out if out is not None else scene
            got = self._remove(cur, m.thing, place) if removing else \
                self._state(cur, m.thing, place, adding, elsewhere, away_from)
            out = got if got is not None else out
        return out

    def _remove(self, scene: list[Thing], want: Thing, place: str | None) -> list[Thing] | None:
        t = self._resolve(scene, want, place)
        if t is None:
            self.stats.unresolved += 1
            return None
        return [x for x in scene if x is not t]

    def _change(self, scene: list[Thing], text: str, d: Mention, mentions: list[Mention],
                places: list[tuple[str, int, int]], elsewhere: bool, away_from: str | None) -> list[Thing] | None:
        # the first place after the mention is part of it when an object that fits is there ("the red circle
        # at the top left"), else it is where the object goes ("put the red circle at the bottom")
        first = next((p for p, start, _ in places if start >= d.end), None)
        at = self._resolve(scene, d.thing, first) if first is not None else None
        own = first if at is not None and at.place == first else None
        target = self._resolve(scene, d.thing, own)
        if target is None:
            self.stats.unresolved += 1
            return None
        if re.search(REMOVE, text[:d.start]) or re.search(REMOVE, text[d.end:]):
            return [x for x in scene if x is not target]
        rest = text[:d.start] + " " * (d.end - d.start) + text[d.end:]
        new = target
        colours = [COLOUR_WORDS[w] for w in re.findall(rf"\b(?:{_alt(COLOUR_WORDS)})\b", rest)]
        if d.thing.colour is None and colours and re.search(r"\binstead of\b", rest):
            colours = colours[:1]   # "want the star in blue instead of red": the first colour is the new one
        colours = [c for c in colours if c != target.colour] or colours
        shapes = [m.thing.shape for m in mentions if m is not d and not m.definite and m.thing.shape]
        sizes = [SIZE_WORDS[w] for w in re.findall(rf"\b(?:{_alt(SIZE_WORDS)})\b", rest)]
        sizes += [v for cue, v in SIZE_CUES.items() if re.search(rf"\b{cue}", rest)]
        if colours:
            new = replace(new, colour=colours[0])
        if shapes:
            new = replace(new, shape=shapes[0])
        if sizes:
            new = replace(new, size=sizes[0])
        moved = [p for p, _, _ in places if p != own]
        if moved:
            new = replace(new, place=moved[0])
        elif elsewhere:
            free = self._free(scene, away_from or target.place)
            new = replace(new, place=free[0]) if free else new
        return None if new == target else self._set(scene, target, new)

    def _state(self, scene: list[Thing], want: Thing, place: str | None, adding: bool, elsewhere: bool,
               away_from: str | None) -> list[Thing] | None:
        """An indefinite mention: what the target shows (or, after an addition cue, a new object)."""
        if not adding and want.shape and want.colour:
            same = [t for t in scene if t.shape == want.shape and t.colour == want.colour]
            if same:
                t = next((x for x in same if x.place == place), None) or \
                    next((x for x in same if x.size == want.size), same[0])
                new = replace(t, size=want.size or t.size, place=place or t.place)
                if elsewhere and place is None:
                    free = self._free(scene, away_from or t.place)
                    new = replace(new, place=free[0]) if free else new
                return self._set(scene, t, new)
        if place is not None:
            there = next((t for t in scene if t.place == place), None)
            if there is not None:
                if adding:
                    return None
                return self._set(scene, there, Thing(want.shape or there.shape, want.colour or there.colour,
                                                     want.size or there.size, place))
            return scene + [replace(want, place=place)]
        if not adding:      # no place: one object of that shape (or that colour) is probably what changed
            for attr, other in (("shape", "colour"), ("colour", "shape")):
                if getattr(want, attr) is None or getattr(want, other) is None:
                    continue
                alike = [t for t in scene if getattr(t, attr) == getattr(want, attr)]
                if len(alike) == 1:
                    t = alike[0]
                    return self._set(scene, t, replace(t, **{other: getattr(want, other)},
                                                       size=want.size or t.size))
        return scene + [want] if len(scene) < len(PLACES) else None

    # -- the text ----------------------------------------------------------------------------------

    def rewrite_one(self, description: str, text: str) -> str:
        self.stats.queries += 1
        scene = read_things(description)
        keep: list[Thing] | None = None
        for clause in (c for c in _SPLIT.split(normalise(text)) if c):
            self.stats.clauses += 1
            if keep is not None and re.match(r"more\b", clause):   # "only X, Y and more": which one went is not said
                keep = None
                continue
            if keep is None and re.search(ONLY, clause):
                keep = []
            new = self._clause(scene, clause, keep)
            if new is None and keep is None:
                self.stats.ignored_clauses += 1
                if len(self.stats.examples) < 5:
                    self.stats.examples.append(f"{clause!r} on {description!r}")
                continue
            scene = new if new is not None else scene
        if keep:
            scene = [t for t in scene if t in keep]
        return describe(scene) if scene else description

    def rewrite(self, descriptions: list[str], texts: list[str]) -> list[str]:
        return [self.rewrite_one(d, t) for d, t in zip(descriptions, texts)]

    def config(self) -> dict[str, Any]:
        return {"name": "lexical", "analog": True,
                "reads": "the reference description and the human text as English (own lexicon, no world grammar)"}


__all__ = ["LexicalRewriter", "LexicalStats", "PLACES", "Thing", "describe", "normalise", "read_things"]
