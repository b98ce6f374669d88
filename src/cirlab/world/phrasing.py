"""How people word an edit: modification texts in three registers, some phrasings human-only.

Real CIR benchmarks mix registers. CSS-like texts are procedural ("make the red circle
blue"); FashionIQ-like texts describe the target ("has a blue circle at the top"); CIRR-like
texts are relative and casual ("same but the circle is blue pls"). ``phrase`` words one edit
(the reference scene and the edit's ``ops``) in a register:

- ``procedural``: the edit's own text (``EditResult.text``);
- ``describing``: what the *target* shows: the changed objects and, by ``detail``, either
  sometimes one unchanged object (``partial``, format-2 worlds) or every unchanged object by
  colour and shape (``full``, as FashionIQ / CIRR texts name what sets the target apart), so the
  text alone carries information about the target;
- ``casual``: relative to the reference, loose references ("the circle", "the red one"),
  fillers and politeness.

Every template has an id (``register/change/n``) and a ``human`` flag. Human-only templates
(and fillers) are what annotators write but a template scripter does not: ``phrase(...,
human=False)`` never uses them, so synthetic training texts (``cirlab.synth``) cover only
part of the phrasings of the world's splits (the synthetic-to-human text gap).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .scene import CELLS, Obj, Scene

REGISTERS: tuple[str, ...] = ("procedural", "describing", "casual")
#: first words that mark a modification text's register (``guess_register``): an imperative asks for a
#: change (procedural); a verb of being / having, a determiner or a number describes the target
PROCEDURAL_STARTS = frozenset("make add remove change turn replace put move take get zoom swap delete switch let "
                              "place insert crop flip rotate use reduce increase decrease bring include keep set "
                              "eliminate drop erase focus".split())
DESCRIBING_STARTS = frozenset("is are has shows show showing contains with only a an the one two three four five "
                              "there it its this picture image photo photograph".split())
#: share of each register among the modification texts of the real benchmarks' val splits (CIRR
#: ``cap.rc2.val``, FashionIQ ``cap.*.val``, CIRCO ``val``), each benchmark weighted equally, by
#: ``guess_register`` (``tests/test_world_registers.py`` recomputes it from the annotation files)
BENCHMARK_REGISTER_SHARES: dict[str, float] = {"procedural": 0.11, "describing": 0.74, "casual": 0.15}
NUMBERS = ("no", "one", "two", "three", "four", "five", "six")
DESCRIBING_VERBS = {"has", "shows", "contains", "also"}
#: how much of the target a describing text names besides the changed objects: ``partial`` sometimes one
#: unchanged object (format-2 worlds); ``full`` every unchanged object, by colour and shape
DETAILS: tuple[str, ...] = ("partial", "full", "placed")


@dataclass(frozen=True)
class Change:
    """One primitive change of an edit: ``before`` (None for add) -> ``after`` (None for remove)."""

    kind: str                 # add, remove, colour, shape, size, move
    before: Obj | None
    after: Obj | None
    anywhere: bool = False    # underspecified place (several valid targets)


@dataclass(frozen=True)
class Phrasing:
    register: str
    text: str
    templates: tuple[str, ...]   # template ids used (one per change, plus fillers)
    human_only: bool             # uses at least one template a scripter never produces


def changes_of(scene: Scene, ops: Sequence[dict[str, Any]], underspecified: bool = False) -> list[Change]:
    """The primitive changes ``ops`` make to ``scene`` (as ``edits.apply_ops`` replays them)."""
    out: list[Change] = []
    for op in ops:
        if op["op"] == "add":
            new = Obj.from_list(op["object"])
            out.append(Change("add", None, new, underspecified))
            scene = scene.add(new)
            continue
        old = scene.at(op["cell"])
        if old is None:
            raise ValueError(f"no object at cell {op['cell']} for {op}")
        if op["op"] == "remove":
            out.append(Change("remove", old, None))
            scene = scene.replace_obj(old, None)
            continue
        new = Obj(op.get("to_cell", old.cell), op.get("shape", old.shape), op.get("colour", old.colour),
                  op.get("size", old.size))
        kind = "move" if "to_cell" in op else next(k for k in ("colour", "shape", "size") if k in op)
        out.append(Change(kind, old, new, underspecified and kind == "move"))
        scene = scene.replace_obj(old, None).add(new)
    return out


def _at(cell: int) -> str:
    return "in the center" if CELLS[cell] == "center" else f"at the {CELLS[cell]}"


def _loose(scene: Scene, o: Obj) -> str:
    """How a person points at ``o``: the shortest cue, even when it is not unambiguous."""
    others = [x for x in scene.objects if x != o]
    if not any(x.shape == o.shape for x in others):
        return f"the {o.shape}"
    if not any(x.colour == o.colour for x in others):
        return f"the {o.colour} one"
    return f"the {o.colour} {o.shape}"


# (template, human-only). Fields: {noun} size colour shape, {cs} colour shape, {at} place, {ref} loose reference,
# {old}/{new} the changed value, {resize} a verb of the size change, {shape}/{colour}, {n} number of shapes in
# the target, {rest} remaining objects.
DESCRIBING: dict[str, list[tuple[str, bool]]] = {
    "add": [("has a {noun} {at}", False), ("with a {noun} {at}", False), ("{n} shapes including a {noun} {at}", False),
            ("shows a {cs} {at} as well", True), ("also contains a {noun} {at}", True)],
    "remove": [("only {rest}", False), ("just {rest}", False), ("has no {cs}", False),
               ("{n} shapes and none is a {cs}", True), ("nothing but {rest}", True)],
    "colour": [("has a {new} {shape} {at}", False), ("with a {new} {shape}", False), ("the {shape} is {new}", False),
               ("shows a {size} {new} {shape}", True), ("its {shape} is {new} coloured", True)],
    "shape": [("has a {colour} {new} {at}", False), ("with a {colour} {new}", False),
              ("a {size} {colour} {new} is there", False), ("shows a {colour} {new} {at}", True),
              ("contains a {colour} {new}", True)],
    "size": [("has a {new} {cs}", False), ("with a {new} {cs} {at}", False), ("the {cs} is {new}", False),
             ("shows a {new} {cs}", True), ("its {cs} is quite {new}", True)],
    "move": [("has the {cs} {at}", False), ("with a {noun} {at}", False), ("the {cs} sits {at}", False),
             ("shows the {cs} {at}", True), ("a {cs} placed {at}", True)],
}
CASUAL: dict[str, list[tuple[str, bool]]] = {
    "add": [("same but with a {noun} {at}", False), ("same plus a {cs} {at}", False),
            ("like this but with a {noun} {at} too", True), ("throw in a {cs} {at}", True)],
    "remove": [("same without {ref}", False), ("same but no {cs}", False), ("lose {ref}", True),
               ("same minus {ref}", True)],
    "colour": [("same but {ref} is {new}", False), ("{new} instead of {old}", False),
               ("want {ref} in {new} instead", True), ("same picture but a {new} {shape}", True)],
    "shape": [("same but {ref} is a {new}", False), ("a {new} instead of {ref}", False),
              ("swap {ref} for a {new}", True), ("same but with a {colour} {new} there", True)],
    "size": [("same but {ref} is {new}", False), ("{ref} but {new}", False), ("{resize} {ref}", True),
             ("same but {ref} is quite {new}", True)],
    "move": [("same but {ref} goes {at}", False), ("{ref} {at} instead", False), ("shove {ref} over {at}", True),
             ("same but with {ref} {at}", True)],
}
JOIN = {"describing": [(" and ", False), (", ", False), (" plus ", True)],
        "casual": [(" and ", False), (", also ", False), (" and also ", True), (" oh and ", True)]}
PREFIX = {"describing": [("", False), ("", False), ("it ", True), ("the picture ", True)],  # before a verb only
          "casual": [("", False), ("", False), ("pls ", True), ("i want ", True), ("can you do ", True),
                     ("basically ", True)]}
SUFFIX = {"describing": [("", False), ("", False), (" please", True)],
          "casual": [("", False), ("", False), (" please", True), (" thanks", True), (" lol", True)]}


def _pick(rng: random.Random, options: list[tuple[str, bool]], human: bool) -> tuple[int, str, bool]:
    allowed = [(n, t, h) for n, (t, h) in enumerate(options) if human or not h]
    return rng.choice(allowed)


def _list(objs: Sequence[Obj], placed: bool = False) -> str:
    nouns = [f"a {o.size} {o.colour} {o.shape} {_at(o.cell)}" if placed else f"a {o.colour} {o.shape}" for o in objs]
    return nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]


def _fields(ref: Scene, target: Scene, c: Change) -> dict[str, str]:
    o = c.after or c.before
    assert o is not None
    f = {"noun": f"{o.size} {o.colour} {o.shape}", "cs": f"{o.colour} {o.shape}", "shape": o.shape,
         "colour": o.colour, "size": o.size, "at": "" if c.anywhere else _at(o.cell), "n": NUMBERS[len(target.objects)],
         "ref": _loose(ref, c.before) if c.before is not None else ""}
    if c.kind in ("colour", "shape", "size") and c.before is not None and c.after is not None:
        f["old"], f["new"] = getattr(c.before, c.kind), getattr(c.after, c.kind)
        f["colour"], f["shape"], f["size"] = c.before.colour, c.before.shape, c.before.size
        f["cs"] = f"{c.before.colour} {c.before.shape}"
        if c.kind == "size":
            f["new"] = "big" if c.after.size == "large" else "small"
            f["resize"] = "blow up" if c.after.size == "large" else "shrink"
    if c.kind == "move" and c.anywhere and c.before is not None:
        f["at"] = f"somewhere other than {_at(c.before.cell).split(' ', 1)[1]}"
    if c.kind == "remove":
        rest = list(target.objects)
        f["rest"] = _list(rest[:3]) + (" and more" if len(rest) > 3 else "") if rest else "an empty background"
    return f


def _context(text: str, ids: list[str], ref: Scene, target: Scene, ops: Sequence[dict[str, Any]], n_parts: int,
             detail: str, rng: random.Random) -> str:
    """A describing text with the unchanged objects of the target it names (see ``DETAILS``)."""
    changed = {c.after for c in changes_of(ref, ops) if c.after is not None}
    others = [o for o in target.objects if o not in changed]
    lists_rest = any(w in text for w in ("only", "just", "nothing"))  # the text already lists the rest
    if detail == "partial":
        if n_parts == 1 and rng.random() < 0.4 and others and not lists_rest:
            o = rng.choice(others)
            ids.append("describing/context")
            return text + f" and a {o.colour} {o.shape}"
        return text
    if detail not in DETAILS:
        raise ValueError(f"unknown describing detail {detail!r}; known: {', '.join(DETAILS)}")
    if not others or lists_rest:
        return text
    rng.shuffle(others)
    ids.append("describing/context-all")
    return text + rng.choice((" and ", ", also ", " next to ")) + _list(others, placed=detail == "placed")


def phrase(ref: Scene, target: Scene, ops: Sequence[dict[str, Any]], procedural: str, register: str,
           rng: random.Random, human: bool = True, underspecified: bool = False,
           detail: str = "partial") -> Phrasing:
    """The edit ``ref -> target`` (by ``ops``) worded in ``register``; ``human=False``: scripter phrasings only;
    ``detail``: how much of the target a describing text names (``DETAILS``)."""
    if register == "procedural":
        return Phrasing(register, procedural, ("procedural",), False)
    table = {"describing": DESCRIBING, "casual": CASUAL}.get(register)
    if table is None:
        raise ValueError(f"unknown register {register!r}; known: {', '.join(REGISTERS)}")
    parts, ids, human_used = [], [], False
    for c in changes_of(ref, ops, underspecified):
        n, template, h = _pick(rng, table[c.kind], human)
        parts.append(" ".join(template.format(**_fields(ref, target, c)).split()))
        ids.append(f"{register}/{c.kind}/{n}")
        human_used |= h
    text = parts[0]
    for p in parts[1:]:
        n, joiner, h = _pick(rng, JOIN[register], human)
        text += joiner + p
        ids.append(f"{register}/join/{n}")
        human_used |= h
    if register == "describing":
        text = _context(text, ids, ref, target, ops, len(parts), detail, rng)
    for name, table2 in (("prefix", PREFIX), ("suffix", SUFFIX)):
        n, s, h = _pick(rng, table2[register], human)
        if name == "prefix" and register == "describing" and text.split()[0] not in DESCRIBING_VERBS:
            continue
        if name == "prefix" and register == "casual" and text.split()[0] in ("want", "can"):
            continue
        if s:
            text = s + text if name == "prefix" else text + s
            ids.append(f"{register}/{name}/{n}")
            human_used |= h
    return Phrasing(register, re.sub(r"\ba ([aeiou])", r"an \1", text), tuple(ids), human_used)


def guess_register(text: str) -> str:
    """The register a modification text reads as, by its first word: an imperative (``PROCEDURAL_STARTS``) is
    procedural, a description of the target (``DESCRIBING_STARTS``: "is red", "has a logo", "two dogs ...") is
    describing, anything else (relative, casual: "same but ...", "fewer towels") casual. A rough reader for
    real annotation files, not the inverse of ``phrase``."""
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return "casual"
    if words[0] in PROCEDURAL_STARTS:
        return "procedural"
    return "describing" if words[0] in DESCRIBING_STARTS else "casual"


def template_words() -> set[str]:
    """Every literal word the register templates, joiners and fillers can produce (placeholders excluded)."""
    words: set[str] = set()
    tables = [t for table in (DESCRIBING, CASUAL) for opts in table.values() for t, _ in opts]
    tables += [t for d in (JOIN, PREFIX, SUFFIX) for opts in d.values() for t, _ in opts]
    for t in tables:
        words |= set(re.findall(r"[a-z]+", re.sub(r"\{[a-z]+\}", " ", t)))
    return words | set(NUMBERS) | {"big", "small", "blow", "up", "shrink", "an", "empty", "background", "more",
                                   "somewhere", "other", "than", "one", "the", "a", "and", "in", "at"}


__all__ = ["BENCHMARK_REGISTER_SHARES", "CASUAL", "Change", "DESCRIBING", "DETAILS", "NUMBERS", "Phrasing", "REGISTERS",
           "changes_of", "guess_register", "phrase", "template_words"]
