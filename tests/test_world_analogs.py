"""The world's non-oracle analogs: the ``lexical`` rewriter (English, not the world's grammar) and the ``t2i``
text-to-image generator (unadapted style, seeded text-to-image errors); IP-CIR wired with them."""
from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cirlab.methods.lexical import LexicalRewriter

REF = "a small red circle at the top left and a large blue star in the center"


@pytest.mark.parametrize("text, want", [
    # procedural
    ("make the red circle yellow", "a small yellow circle at the top left and a large blue star in the center"),
    ("remove the blue star", "a small red circle at the top left"),
    ("move the red circle to the bottom right", "a large blue star in the center and a small red circle at the bottom right"),
    ("add a small green square at the top", "a small red circle at the top left, a small green square at the top and "
                                           "a large blue star in the center"),
    ("turn the blue star into a diamond", "a small red circle at the top left and a large blue diamond in the center"),
    ("the blue star should be smaller; delete the red circle", "a small blue star in the center"),
    # describing
    ("has a gray star in the center", "a small red circle at the top left and a large gray star in the center"),
    ("only a blue star", "a large blue star in the center"),
    ("the star is tiny", "a small red circle at the top left and a small blue star in the center"),
    ("the red circle sits at the bottom and a large blue star in the center",
     "a large blue star in the center and a small red circle at the bottom"),
    ("shows a large green square at the right as well and a red circle",
     "a small red circle at the top left, a large blue star in the center and a large green square at the right"),
    # casual
    ("same but the red one is purple pls", "a small purple circle at the top left and a large blue star in the center"),
    ("lose the star lol", "a small red circle at the top left"),
    ("blow up the circle thanks", "a large red circle at the top left and a large blue star in the center"),
    ("swap the star for a square", "a small red circle at the top left and a large blue square in the center"),
    ("orange instead of red", "a small orange circle at the top left and a large blue star in the center"),
    ("same but the circle goes at the bottom left, also same plus a small cyan diamond at the top right",
     "a small cyan diamond at the top right, a large blue star in the center and a small red circle at the bottom left"),
])
def test_lexical_rewriter_reads_every_register(text, want):
    assert LexicalRewriter().rewrite_one(REF, text) == want


def test_lexical_rewriter_is_wrong_where_a_cheap_llm_is():
    rw = LexicalRewriter()
    two_red = "a small red circle at the top left and a large red circle at the bottom right"
    # an ambiguous loose reference: the person meant the large one; the reader takes the first in reading order
    assert rw.rewrite_one(two_red, "same but the red one is blue") == \
        "a small blue circle at the top left and a large red circle at the bottom right"
    # a describing text without a place, two stars fit: it adds a star instead of recolouring one
    two_stars = "a small red star at the top and a large green star at the bottom"
    assert rw.rewrite_one(two_stars, "with a blue star") == \
        "a small red star at the top, a large green star at the bottom and a blue star"
    # what the text leaves unstated stays unstated (the size of the added diamond)
    assert rw.rewrite_one(REF, "throw in a red diamond at the bottom") == \
        "a small red circle at the top left, a large blue star in the center and a red diamond at the bottom"
    # "only X and more" does not say which object went: nothing is removed
    three = "a small red circle at the top left, a large blue star in the center and a small gray square at the bottom"
    assert rw.rewrite_one(three, "only a red circle and more") == three
    # it trusts the reference description: an object the description lacks cannot be changed
    assert rw.rewrite_one(REF, "make the green triangle red") == REF
    assert rw.stats.unresolved == 1 and rw.stats.ignored_clauses == 1


def test_lexical_rewriter_imports_nothing_of_the_world():
    src = Path(__file__).parents[1] / "src" / "cirlab" / "methods" / "lexical.py"
    imported = set()
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert imported <= {"__future__", "re", "dataclasses", "typing"}, imported
    # in a fresh interpreter, rewriting loads no module of the world (its grammar, its phrasings, the synth package)
    probe = ("import sys; from cirlab.methods.lexical import LexicalRewriter as L; "
             "print(L().rewrite_one('a small red circle at the top', 'same but the circle is blue')); "
             "print(sorted(m for m in sys.modules if m.startswith(('cirlab.world', 'cirlab.synth', 'cirlab.methods.proxies'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["a small blue circle at the top", "[]"]


def test_rewriter_accuracy_scores_against_the_true_targets(small_world):
    from cirlab.data import load_dataset
    from cirlab.experiments.analogs import rewriter_accuracy
    from cirlab.methods.proxies import create_rewriter

    ds = load_dataset(small_world / "val")
    caption = dict(zip(ds.gallery.ids, ds.gallery.captions))
    first_target = {t.caption: caption[t.targets[0]] for t in ds.triplets if t.targets}
    texts = {w: t.caption for t in ds.triplets if t.targets for w in t.meta["texts"].values()}

    class Perfect:   # writes the first target's own caption
        def rewrite_one(self, description, text):
            return first_target[texts[text]]

    class Echo:      # changes nothing: the reference is never a target
        def rewrite_one(self, description, text):
            return description

    n = len([t for t in ds.triplets if t.targets])
    perfect = rewriter_accuracy(Perfect(), small_world / "val")
    assert set(perfect) == {"procedural", "describing", "casual", "all"}
    assert all(v["exact"] == 100.0 and v["f1"] == 100.0 for v in perfect.values())
    assert perfect["casual"]["queries"] == n and perfect["all"]["queries"] == 3 * n
    assert all(v["exact"] == 0.0 and v["f1"] < 100.0 for v in rewriter_accuracy(Echo(), small_world / "val").values())
    world = rewriter_accuracy(create_rewriter("world"), small_world / "val")
    lexical = rewriter_accuracy(create_rewriter("lexical"), small_world / "val")
    assert world["procedural"]["exact"] == 100.0                 # the oracle: it replays the procedural grammar
    for register in ("describing", "casual"):                   # it cannot read people; the lexical reader can
        assert lexical[register]["exact"] > world[register]["exact"] + 30
    assert min(v["exact"] for v in lexical.values()) < 100.0     # and is imperfect


# ---- t2i ----------------------------------------------------------------------------------------------

def _t2i(style: str = "unadapted", **errors):
    from cirlab.methods.proxies import NearestCaptionCaptioner, T2IErrors, TextToImageGenerator

    # draw() reads the description it is given; the captioner is only asked by generate()
    return TextToImageGenerator(NearestCaptionCaptioner(None, "world/train"), LexicalRewriter(), T2IErrors(**errors),
                                style=style)


TWO = "a large red circle at the top left and a large blue square at the bottom right"


def _near(img, colour, box) -> int:
    arr = np.asarray(img.crop(box)).astype(np.int64)
    return int((np.abs(arr - np.array(colour)).sum(-1) < 60).sum())


def test_t2i_without_errors_draws_the_described_scene_in_the_unadapted_style():
    from cirlab.synth.world import UNADAPTED, WorldGenerator, parse_description

    gen = _t2i(binding=0.0, count=0.0, spatial=0.0)
    for desc in (TWO, REF, "a small green triangle at the bottom, a large gray diamond at the right and a small "
                           "orange star at the top"):
        want = WorldGenerator(UNADAPTED, 64, seed=4).render(parse_description(desc), desc)
        assert np.array_equal(np.asarray(gen.draw(desc, seed=4)), np.asarray(want))
    assert gen.made == {"binding": 0, "count": 0, "spatial": 0}
    assert "oracle" not in json.dumps(gen.config())
    assert "oracle" in _t2i(style="real").config()


def test_t2i_binding_errors_swap_the_colours():
    from cirlab.synth.world import UNADAPTED
    from cirlab.world.scene import COLOURS

    red, blue = ([min(255, max(0, c + d)) for c, d in zip(COLOURS[n], UNADAPTED.colour_shift)] for n in ("red", "blue"))
    top_left, bottom_right = (0, 0, 21, 21), (43, 43, 64, 64)
    right = _t2i(binding=0.0, count=0.0, spatial=0.0).draw(TWO, seed=1)
    assert _near(right, red, top_left) > 50 and _near(right, blue, top_left) == 0
    for seed in range(3):
        swapped = _t2i(binding=1.0, count=0.0, spatial=0.0).draw(TWO, seed=seed)
        assert _near(swapped, blue, top_left) > 50 and _near(swapped, red, top_left) == 0
        assert _near(swapped, red, bottom_right) > 50 and _near(swapped, blue, bottom_right) == 0


def test_t2i_count_and_spatial_errors_and_their_seeds():
    from cirlab.synth.world import parse_description

    three = parse_description("a small red circle at the top left, a large blue star in the center and a small "
                              "gray square at the bottom")
    gen = _t2i(binding=0.0, count=1.0, spatial=0.0)
    for s in range(6):
        got, made = gen.corrupt(three, random.Random(s))
        assert made == ["count"] and len(got.objects) in (2, 4)
        assert {(o.shape, o.colour, o.size) for o in got.objects} <= {(o.shape, o.colour, o.size) for o in three.objects}
    two = parse_description(TWO)                   # fewer than `many` objects: no count error
    assert gen.corrupt(two, random.Random(0)) == (two, [])
    gen = _t2i(binding=0.0, count=0.0, spatial=1.0)
    got, made = gen.corrupt(three, random.Random(0))
    assert made == ["spatial"] and got != three
    assert sorted((o.shape, o.colour, o.size) for o in got.objects) == sorted((o.shape, o.colour, o.size)
                                                                             for o in three.objects)
    # seeded: one seed gives the same images, another seed other errors
    descs = [f"a small red circle at the top left, a large blue star at the {p} and a small gray square at the bottom"
             for p in ("top", "top right", "left", "center", "right", "bottom left", "bottom right")]
    gen = _t2i(binding=0.5, count=0.5, spatial=0.5)
    a, b = ([np.asarray(gen.draw(d, seed=s)) for d in descs] for s in (0, 0))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = [np.asarray(gen.draw(d, seed=1)) for d in descs]
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_t2i_fills_what_the_prompt_leaves_unstated():
    gen = _t2i(binding=0.0, count=0.0, spatial=0.0)
    scene = gen.scene_of("a red diamond and a large pink star at the top", random.Random(0))
    assert len(scene.objects) == 2
    star = next(o for o in scene.objects if o.shape == "star")
    assert star.cell == 1 and star.size == "large" and star.colour != "pink"    # no pink paint: some other colour
    diamond = next(o for o in scene.objects if o.shape == "diamond")
    assert diamond.colour == "red" and diamond.cell != 1
    assert gen.scene_of("nothing to see", random.Random(0)) is None


def test_bad_analog_specs_are_clear_errors(tiny_backbone):
    from cirlab.errors import CirlabError
    from cirlab.methods.generators import create_proxy_generator
    from cirlab.methods.proxies import create_rewriter

    with pytest.raises(CirlabError, match=r"binding=2.0: a rate must be in \[0, 1\]"):
        create_proxy_generator("t2i:world/train,binding=2", tiny_backbone)
    with pytest.raises(CirlabError, match="option 'colour=red'"):
        create_proxy_generator("t2i:world/train,colour=red", tiny_backbone)
    with pytest.raises(CirlabError, match="give the caption bank"):
        create_proxy_generator("t2i:", tiny_backbone)
    with pytest.raises(CirlabError, match="style='photo'"):
        create_proxy_generator("t2i:world/train,style=photo", tiny_backbone)
    with pytest.raises(CirlabError, match="takes no argument"):
        create_rewriter("lexical:gpt")
    gen = create_proxy_generator("t2i:world/train,count=0.5,many=4", tiny_backbone)
    assert gen.config()["errors"] == {"binding": 0.15, "count": 0.5, "spatial": 0.1, "many": 4}


# ---- IP-CIR with the analogs ---------------------------------------------------------------------------

def test_ip_cir_default_configuration_has_no_oracle_and_the_oracle_one_is_labelled(small_world, tiny_backbone,
                                                                                    tmp_path):
    import cirlab.train.ip_cir  # noqa: F401  (registers the trainers)
    from cirlab.methods import create_method
    from cirlab.methods.base import oracle_parts
    from cirlab.train.zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext

    specs = {}
    for name in ("ip-cir", "ip-cir-oracle"):
        ctx = ZeroShotContext(tiny_backbone, small_world, tmp_path / name, quick=True, progress=False)
        specs[name] = ZEROSHOT_TRAINERS.get(name)(ctx)
    cfg = json.loads(Path(specs["ip-cir"].split(":", 1)[1]).read_text())
    assert cfg["rewriter"] == "lexical" and cfg["generator"].startswith("t2i:")
    assert oracle_parts(create_method(specs["ip-cir"], tiny_backbone).config()) == []
    why = oracle_parts(create_method(specs["ip-cir-oracle"], tiny_backbone).config())
    assert any("grammar" in w for w in why) and any("renderer" in w for w in why)


def test_generative_experiment_ranks_the_non_oracle_ip_cir_and_labels_the_oracle(small_world, tmp_path, capsys):
    from cirlab.cli import main

    out = tmp_path / "gen"
    rc = main(["experiment", "generative", "--quick", "--out", str(out), "--world", str(small_world), "--trainers",
               "ip-cir,ip-cir-oracle", "--untrained", "image", "--threads", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())["results"]
    assert results["ip-cir"]["oracle"] == [] and len(results["ip-cir-oracle"]["oracle"]) == 2
    md = (out / "results.md").read_text()
    ranking = next(line for line in md.splitlines() if line.startswith("Ranking by overall recall@10"))
    assert "ip-cir" in ranking.split(": ", 1)[1].split(" > ") and "ip-cir-oracle" not in ranking
    assert "| ip-cir-oracle (oracle) |" in md and "| ip-cir |" in md
