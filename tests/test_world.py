"""The built-in world: determinism, edit correctness, splits, hardness."""
from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest

from cirlab.world import (CELLS, COLOURS, SHAPES, Obj, Scene, WorldConfig, apply_ops, generate_split,
                          generate_world, make_edit, one_attribute_away, random_scene)
from cirlab.world.edits import SINGLE_EDITS


def _scenes(root: Path) -> dict[str, Scene]:
    out = {}
    for line in (root / "gallery.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["id"]] = Scene.from_list(row["meta"]["objects"])
    return out


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = WorldConfig(seed=5).small(30)
    a = generate_world(tmp_path / "a", cfg, splits=("test",), progress=False)["test"]
    b = generate_world(tmp_path / "b", cfg, splits=("test",), progress=False)["test"]
    c = generate_world(tmp_path / "c", WorldConfig(seed=6).small(30), splits=("test",), progress=False)["test"]
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_regenerating_reuses_complete_split(tmp_path):
    cfg = WorldConfig(seed=1).small(20)
    root = generate_world(tmp_path, cfg, splits=("val",), progress=False)["val"]
    stamp = (root / "triplets.jsonl").stat().st_mtime_ns
    generate_world(tmp_path, cfg, splits=("val",), progress=False)
    assert (root / "triplets.jsonl").stat().st_mtime_ns == stamp


def test_every_target_is_the_reference_with_the_edit_applied(small_world):
    for split in ("train", "val", "test"):
        root = small_world / split
        scenes = _scenes(root)
        rows = [json.loads(x) for x in (root / "triplets.jsonl").read_text().splitlines()]
        assert rows
        for row in rows:
            ref = scenes[row["reference"]]
            edited = apply_ops(ref, row["meta"]["ops"] + row["meta"].get("silent", []))
            assert edited != ref
            assert row["targets"], row
            # the first target is exactly the edited reference, with its unmentioned changes (drift)
            assert scenes[row["targets"][0]] == edited, row
            if not row["meta"]["underspecified"]:
                assert len(row["targets"]) == 1
            for t in row["targets"][1:]:  # other valid targets differ only where the text leaves freedom
                alt = scenes[t]
                assert len(alt.objects) == len(edited.objects)
                assert sorted((o.shape, o.colour, o.size) for o in alt.objects) == \
                    sorted((o.shape, o.colour, o.size) for o in edited.objects)


def test_drift_changes_every_object_the_edit_leaves_alone_and_only_those(small_world):
    """At the default drift (1.0) each object an edit leaves alone changes size or place; what the edit
    itself does is as the ops say; the reference's other edits drift too; drift 0 draws nothing."""
    assert WorldConfig().drift == 1.0
    scenes, rows = generate_split(WorldConfig(seed=3).small(60), "test")
    drifted = 0
    for row in rows:
        if row["meta"]["underspecified"]:
            assert "silent" not in row["meta"]
            continue
        ref, target = scenes[row["reference"]], scenes[row["targets"][0]]
        exact = apply_ops(ref, row["meta"]["ops"])
        left_alone = [o for o in exact.objects if o in ref.objects]
        assert len(row["meta"].get("silent", [])) == len(left_alone), row
        for o in left_alone:  # its shape and colour stay, its size or its place does not
            twins = [t for t in target.objects if (t.shape, t.colour) == (o.shape, o.colour)]
            assert twins and o not in target.objects, (o, target)
        drifted += bool(left_alone)
    assert drifted >= len(rows) // 2
    # a config written before drift existed reads as drift 0: exact edits, no silent changes
    old = WorldConfig(seed=3).small(60).to_dict()
    del old["drift"]
    assert WorldConfig.from_dict(old).drift == 0.0
    _, exact_rows = generate_split(WorldConfig.from_dict(old), "test")
    for row in exact_rows:
        assert "silent" not in row["meta"]
    with pytest.raises(Exception, match="drift"):
        WorldConfig(drift=1.5)


def test_texts_name_the_new_attribute():
    rng = random.Random(0)
    for kind in ("colour", "shape", "add"):
        for _ in range(100):
            ref = random_scene(rng, 2, 4)
            res = make_edit(ref, kind, rng)
            assert res is not None
            (op,) = res.ops
            if kind == "add":
                shape, colour, size, cell = op["object"]
                assert f"{size} {colour} {shape}" in res.text and CELLS[cell] in res.text
            else:
                assert op[kind] in res.text.split()[-1] or f" {op[kind]}" in res.text


def test_remove_refers_to_a_unique_object():
    rng = random.Random(1)
    for _ in range(200):
        ref = random_scene(rng, 2, 5)
        res = SINGLE_EDITS["remove"](ref, rng, frozenset(), False)
        (op,) = res.ops
        removed = ref.at(op["cell"])
        phrase = res.text.split("the ", 1)[1]
        m = re.fullmatch(r"(?:(small|large) )?(\w+) (\w+)(?: (?:at|in) the (.+))?", phrase)
        assert m, res.text
        size, colour, shape, where = m.groups()
        matches = [o for o in ref.objects if o.colour == colour and o.shape == shape
                   and (size is None or o.size == size) and (where is None or o.where == where)]
        assert matches == [removed], (res.text, ref)


def test_heldout_combinations_never_in_train_and_marked_in_test():
    cfg = WorldConfig(seed=0).small(200)
    held = {tuple(x) for x in cfg.heldout}
    train_scenes, train_rows = generate_split(cfg, "train")
    assert all(not (s.combos() & held) for s in train_scenes.values())
    test_scenes, test_rows = generate_split(cfg, "test")
    flagged = [r for r in test_rows if r["meta"]["heldout"]]
    assert flagged, "some test queries should involve held-out combinations"
    for r in test_rows:
        assert r["meta"]["heldout"] == bool(test_scenes[r["targets"][0]].combos() & held)


def test_default_test_split_is_large_and_hard():
    cfg = WorldConfig()
    scenes, rows = generate_split(cfg, "test")
    assert len(scenes) >= 5000 and len(rows) >= 2000
    kinds = {r["meta"]["kind"] for r in rows}
    assert kinds == {"add", "remove", "colour", "shape", "size", "move", "two edits"}
    multi = [r for r in rows if len(r["targets"]) > 1]
    assert len(multi) >= 50, "CIRCO-style queries with several valid targets"
    # near-neighbours: for most queries the gallery holds a scene one attribute away from the target
    by_key = {s.key for s in scenes.values()}

    def neighbours(a: Scene, b: Scene) -> bool:
        sa, sb = set(a.objects), set(b.objects)
        return len(sa ^ sb) in (1, 2) and abs(len(sa) - len(sb)) <= 1 and a != b

    sample = rows[:300]
    objs = list(scenes.values())
    with_nn = sum(any(neighbours(scenes[r["targets"][0]], s) for s in objs) for r in sample)
    assert with_nn >= 0.95 * len(sample)
    assert len(by_key) == len(scenes)


def test_one_attribute_away_changes_exactly_one_thing():
    rng = random.Random(2)
    for _ in range(300):
        s = random_scene(rng, 1, 4)
        n = one_attribute_away(s, rng)
        diff = set(s.objects) ^ set(n.objects)
        assert n != s and len(diff) in (1, 2)
        if len(diff) == 2:  # one object changed in one attribute (or moved)
            a, b = sorted(diff, key=lambda o: o in s.objects)
            changed = sum([a.shape != b.shape, a.colour != b.colour, a.size != b.size, a.cell != b.cell])
            assert changed == 1


def test_scene_rejects_two_objects_in_one_cell():
    with pytest.raises(ValueError):
        Scene.of([Obj(0, "circle", "red", "small"), Obj(0, "square", "blue", "large")])
    assert len(SHAPES) == 5 and len(COLOURS) == 8
