"""Edits of the built-in world: each turns a reference scene into a target and says so in words.

An edit is a list of primitive operations (``ops``) that ``apply_ops`` replays, so
tests can check that the target really is the reference with the edit applied.
Underspecified edits ("add a red circle", with no place) accept several targets:
``valid_targets`` enumerates them. ``drift`` changes what an edit leaves alone (sizes and places of
the other objects) without saying so, as a real target photo differs from its reference in more
than the modification text says; its ``silent`` ops replay after ``ops``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from .scene import CELLS, COLOURS, MAX_OBJECTS, SHAPES, SIZES, Obj, Scene

EDIT_KINDS: tuple[str, ...] = ("add", "remove", "colour", "shape", "size", "move", "two edits")
Banned = frozenset  # of (colour, shape)


@dataclass
class EditResult:
    kind: str
    text: str
    target: Scene
    ops: list[dict[str, Any]]
    underspecified: bool = False
    alternatives: list[Scene] = field(default_factory=list)  # other valid targets (underspecified)
    silent: list[dict[str, Any]] = field(default_factory=list)  # unmentioned changes (``drift``), after ops


# ---- referring to an object -------------------------------------------------------------------

def refer(scene: Scene, o: Obj) -> str:
    """The shortest unambiguous noun phrase for ``o`` in ``scene``."""
    others = [x for x in scene.objects if x != o]
    if not any(x.colour == o.colour and x.shape == o.shape for x in others):
        return f"the {o.colour} {o.shape}"
    if not any(x.colour == o.colour and x.shape == o.shape and x.size == o.size for x in others):
        return f"the {o.size} {o.colour} {o.shape}"
    return f"the {o.colour} {o.shape} at the {o.where}"


def _at(where: str) -> str:
    return f"in the {where}" if where == "center" else f"at the {where}"


# ---- primitive operations ---------------------------------------------------------------------

def apply_ops(scene: Scene, ops: list[dict[str, Any]]) -> Scene:
    """Replay primitive operations (each addresses an object by its cell)."""
    for op in ops:
        kind = op["op"]
        if kind == "add":
            scene = scene.add(Obj.from_list(op["object"]))
            continue
        old = scene.at(op["cell"])
        if old is None:
            raise ValueError(f"no object at cell {op['cell']} for {op}")
        if kind == "remove":
            scene = scene.replace_obj(old, None)
        elif kind == "set":
            new = Obj(op.get("to_cell", old.cell), op.get("shape", old.shape), op.get("colour", old.colour),
                      op.get("size", old.size))
            scene = scene.replace_obj(old, None).add(new)
        else:
            raise ValueError(f"unknown op {kind!r}")
    return scene


# ---- the edits --------------------------------------------------------------------------------

def _ok(scene: Scene, banned: Banned) -> bool:
    return not (scene.combos() & banned)


def edit_add(scene: Scene, rng: random.Random, banned: Banned, underspecify: bool) -> EditResult | None:
    free = scene.free_cells()
    if len(scene.objects) >= MAX_OBJECTS or not free:
        return None
    cell = rng.choice(free)
    new = Obj(cell, rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))
    if (new.colour, new.shape) in banned:
        return None
    target = scene.add(new)
    noun = new.noun()
    if underspecify and len(free) >= 3:
        text = rng.choice([f"add a {noun} anywhere", f"put a {noun} somewhere", f"also show a {noun}",
                           f"add a {noun} to an empty spot"])
        alts = [scene.add(Obj(c, new.shape, new.colour, new.size)) for c in free if c != cell]
        return EditResult("add", text, target, [{"op": "add", "object": new.to_list()}], True, alts)
    text = rng.choice([f"add a {noun} {_at(new.where)}", f"put a {noun} {_at(new.where)}",
                       f"insert a {noun} {_at(new.where)}", f"place a {noun} {_at(new.where)}"])
    return EditResult("add", text, target, [{"op": "add", "object": new.to_list()}])


def edit_remove(scene: Scene, rng: random.Random, banned: Banned, underspecify: bool) -> EditResult | None:
    if len(scene.objects) < 2:
        return None
    o = rng.choice(scene.objects)
    ref = refer(scene, o)
    text = rng.choice([f"remove {ref}", f"take away {ref}", f"delete {ref}", f"get rid of {ref}",
                       f"without {ref}"])
    return EditResult("remove", text, scene.replace_obj(o, None), [{"op": "remove", "cell": o.cell}])


def _edit_attr(attr: str, values: tuple[str, ...], phrasings: Callable[[str, str, Obj], list[str]]):
    def edit(scene: Scene, rng: random.Random, banned: Banned, underspecify: bool) -> EditResult | None:
        o = rng.choice(scene.objects)
        new_val = rng.choice([v for v in values if v != getattr(o, attr)])
        kw = {attr: new_val}
        new = Obj(o.cell, kw.get("shape", o.shape), kw.get("colour", o.colour), kw.get("size", o.size))
        if (new.colour, new.shape) in banned:
            return None
        text = rng.choice(phrasings(refer(scene, o), new_val, o))
        return EditResult(attr, text, scene.replace_obj(o, new), [{"op": "set", "cell": o.cell, attr: new_val}])
    return edit


edit_colour = _edit_attr("colour", tuple(COLOURS), lambda ref, v, o: [
    f"make {ref} {v}", f"change the colour of {ref} to {v}", f"paint {ref} {v}", f"turn {ref} {v}",
    f"{ref} should be {v}"])
edit_shape = _edit_attr("shape", SHAPES, lambda ref, v, o: [
    f"turn {ref} into a {v}", f"replace {ref} with a {o.colour} {v}", f"change {ref} to a {v}",
    f"make {ref} a {v}"])
edit_size = _edit_attr("size", SIZES, lambda ref, v, o: (
    [f"make {ref} bigger", f"enlarge {ref}", f"make {ref} large", f"{ref} should be larger"] if v == "large" else
    [f"make {ref} smaller", f"shrink {ref}", f"make {ref} small", f"{ref} should be smaller"]))


def edit_move(scene: Scene, rng: random.Random, banned: Banned, underspecify: bool) -> EditResult | None:
    free = scene.free_cells()
    if not free:
        return None
    o = rng.choice(scene.objects)
    cell = rng.choice(free)
    ref = refer(scene, o)
    target = scene.replace_obj(o, None).add(Obj(cell, o.shape, o.colour, o.size))
    ops = [{"op": "set", "cell": o.cell, "to_cell": cell}]
    if underspecify and len(free) >= 3:
        text = rng.choice([f"move {ref} somewhere else", f"move {ref} to another place",
                           f"put {ref} in a different spot"])
        alts = [scene.replace_obj(o, None).add(Obj(c, o.shape, o.colour, o.size)) for c in free if c != cell]
        return EditResult("move", text, target, ops, True, alts)
    where = CELLS[cell]
    text = rng.choice([f"move {ref} to the {where}", f"shift {ref} to the {where}", f"put {ref} {_at(where)}",
                       f"{ref} should be {_at(where)}"])
    return EditResult("move", text, target, ops)


SINGLE_EDITS: dict[str, Callable[..., EditResult | None]] = {
    "add": edit_add, "remove": edit_remove, "colour": edit_colour, "shape": edit_shape, "size": edit_size,
    "move": edit_move,
}


def edit_two(scene: Scene, rng: random.Random, banned: Banned, underspecify: bool) -> EditResult | None:
    k1, k2 = rng.sample(list(SINGLE_EDITS), 2)
    first = SINGLE_EDITS[k1](scene, rng, banned, False)
    if first is None:
        return None
    second = SINGLE_EDITS[k2](first.target, rng, banned, False)
    if second is None or second.target == scene or _touched(first.ops) & _addressed(second.ops):
        return None  # the second edit must act on another object than the first

    joiner = rng.choice([" and ", ", then ", " and also ", "; "])
    ops = first.ops + second.ops
    return EditResult("two edits", first.text + joiner + second.text, second.target, ops)


def _touched(ops: list[dict[str, Any]]) -> set[int]:
    """Cells that hold an object created or changed by ``ops``."""
    return {op["object"][3] if op["op"] == "add" else op.get("to_cell", op["cell"]) for op in ops}


def _addressed(ops: list[dict[str, Any]]) -> set[int]:
    return {op["cell"] for op in ops if "cell" in op}


EDITS: dict[str, Callable[..., EditResult | None]] = {**SINGLE_EDITS, "two edits": edit_two}


def make_edit(scene: Scene, kind: str, rng: random.Random, banned: Banned = frozenset(),
              underspecify: bool = False, tries: int = 20) -> EditResult | None:
    """Apply an edit of ``kind`` to ``scene``; ``None`` when it does not fit this scene."""
    for _ in range(tries):
        res = EDITS[kind](scene, rng, banned, underspecify)
        if res is not None and res.target != scene and _ok(res.target, banned):
            res.alternatives = [a for a in res.alternatives if _ok(a, banned)]
            return res
    return None


def drift(ref: Scene, res: EditResult, rng: random.Random, rate: float) -> EditResult:
    """``res`` with each object the edit left alone changed silently with probability ``rate``: its size
    flipped or (half of the time, when a cell is free) moved to a free cell. The changes are ``set`` ops
    in ``res.silent`` (``apply_ops(ref, ops + silent)`` is the target). Edits with several valid targets
    are left as they are (their alternatives must stay the same scene up to the free place), and
    ``rate <= 0`` draws nothing from ``rng`` (worlds without drift stay byte-identical)."""
    if rate <= 0 or res.alternatives or res.underspecified:
        return res
    target, silent = res.target, []
    for o in [x for x in res.target.objects if x in ref.objects]:
        if rng.random() >= rate:
            continue
        free = target.free_cells()
        if free and rng.random() < 0.5:
            cell = rng.choice(free)
            new, op = Obj(cell, o.shape, o.colour, o.size), {"op": "set", "cell": o.cell, "to_cell": cell}
        else:
            size = "small" if o.size == "large" else "large"
            new, op = Obj(o.cell, o.shape, o.colour, size), {"op": "set", "cell": o.cell, "size": size}
        target = target.replace_obj(o, None).add(new)
        silent.append(op)
    return EditResult(res.kind, res.text, target, res.ops, res.underspecified, [], silent)


def one_attribute_away(scene: Scene, rng: random.Random, banned: Banned = frozenset()) -> Scene:
    """A scene that differs from ``scene`` in exactly one attribute of one object, or by one object."""
    for _ in range(50):
        choice = rng.random()
        o = rng.choice(scene.objects)
        if choice < 0.25:
            new = Obj(o.cell, o.shape, rng.choice([c for c in COLOURS if c != o.colour]), o.size)
        elif choice < 0.5:
            new = Obj(o.cell, rng.choice([s for s in SHAPES if s != o.shape]), o.colour, o.size)
        elif choice < 0.7:
            new = Obj(o.cell, o.shape, o.colour, "small" if o.size == "large" else "large")
        elif choice < 0.85 and scene.free_cells():
            new = Obj(rng.choice(scene.free_cells()), o.shape, o.colour, o.size)
        elif len(scene.objects) < MAX_OBJECTS and scene.free_cells():
            add = Obj(rng.choice(scene.free_cells()), rng.choice(SHAPES), rng.choice(list(COLOURS)),
                      rng.choice(SIZES))
            cand = scene.add(add)
            if _ok(cand, banned):
                return cand
            continue
        elif len(scene.objects) > 1:
            cand = scene.replace_obj(o, None)
            return cand
        else:
            continue
        cand = scene.replace_obj(o, new)
        if cand != scene and _ok(cand, banned):
            return cand
    return scene
