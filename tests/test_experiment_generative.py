"""`cirlab experiment generative --quick`: trainers from the registry, failures reported, grouped metrics
equal to metrics recomputed here from the saved rankings."""
from __future__ import annotations

import json
import statistics

import pytest

from cirlab.cli import main
from cirlab.train.zeroshot import ZEROSHOT_TRAINERS

GROUP = {"add": "add", "remove": "remove", "colour": "attribute", "shape": "attribute", "size": "attribute",
         "move": "move", "two edits": "two edits"}


def _recall(rankings, targets, k):
    return 100.0 * sum(bool(set(r[:k]) & set(t)) for r, t in zip(rankings, targets)) / len(rankings)


def _map10(rankings, targets):
    total = 0.0
    for r, t in zip(rankings, targets):
        hits, ap = 0, 0.0
        for i, x in enumerate(r[:10], 1):
            if x in t:
                hits += 1
                ap += hits / i
        total += ap / min(len(t), 10)
    return 100.0 * total / len(rankings)


@pytest.fixture()
def test_trainers():
    seen = {}

    def broken(ctx):
        raise RuntimeError("deliberately broken trainer")

    def needs_p2w(ctx):
        seen[ctx.seed] = dict(ctx.trained)
        if "pic2word" not in ctx.trained:
            raise AssertionError("pic2word was not trained first")
        return "sum"

    needs_p2w.requires = ("pic2word",)
    ZEROSHOT_TRAINERS.register("test-broken")(broken)
    ZEROSHOT_TRAINERS.register("test-needs-p2w")(needs_p2w)
    yield seen
    for name in ("test-broken", "test-needs-p2w"):
        ZEROSHOT_TRAINERS._factories.pop(name, None)
        ZEROSHOT_TRAINERS._help.pop(name, None)


def test_quick_comparison(small_world, tmp_path, capsys, test_trainers):
    out = tmp_path / "gen"
    options = {"predicir": {"steps": 4, "max_images": 32}, "pic2word": {"steps": 4, "max_images": 64}}
    rc = main(["experiment", "generative", "--quick", "--out", str(out), "--world", str(small_world),
               "--trainers", "test-needs-p2w,test-broken,predicir", "--untrained", "image,sum",
               "--seeds", "0", "1", "--threads", "1", "--no-progress", "--options", json.dumps(options),
               "--report", str(tmp_path / "docs" / "gen")])
    err = capsys.readouterr().err
    assert rc == 1  # a failing trainer makes the run fail, after writing the results
    assert "FAILED train 'test-broken' (seed 0): RuntimeError: deliberately broken trainer" in err
    payload = json.loads((out / "results.json").read_text())
    assert payload == json.loads((tmp_path / "docs" / "gen.json").read_text())
    assert payload["trainers"] == ["pic2word", "predicir", "test-broken", "test-needs-p2w"]
    assert payload["added_for_requires"] == ["pic2word"]
    assert [(f["stage"], f["name"], f["seed"]) for f in payload["failures"]] == [
        ("train", "test-broken", 0), ("train", "test-broken", 1)]
    assert set(test_trainers[0]) == {"pic2word", "predicir"}  # what was trained before it, seed 0
    assert test_trainers[1]["predicir"].startswith("predicir:") and "seed-1" in test_trainers[1]["predicir"]
    md = (out / "results.md").read_text()
    assert "**Failures**" in md and "test-broken" in md and "--quick" in md
    assert md == (tmp_path / "docs" / "gen.md").read_text()
    assert set(payload["results"]) == {"pic2word", "predicir", "test-needs-p2w", "image", "sum"}

    # independent recomputation from the saved rankings and the raw triplets file
    trips = [json.loads(line) for line in (small_world / "test" / "triplets.jsonl").read_text().splitlines()]
    trips = [t for t in trips if t.get("targets")]
    for name, res in payload["results"].items():
        per_seed = {}
        for seed, entry in res["per_seed"].items():
            ranks = json.loads((out / "rankings" / ("untrained" if seed == "-" else f"seed-{seed}")
                                / f"{name}.json").read_text())
            groups = {"all": trips}
            for t in trips:
                groups.setdefault(GROUP[t["meta"]["kind"]], []).append(t)
            mine = {}
            for g, ts in groups.items():
                r, tg = [ranks[t["id"]] for t in ts], [t["targets"] for t in ts]
                mine[g] = {**{f"recall@{k}": _recall(r, tg, k) for k in (1, 5, 10, 50)}, "map@10": _map10(r, tg)}
                for m, v in mine[g].items():
                    assert entry["groups"][g][m] == pytest.approx(v, abs=1e-9), (name, seed, g, m)
            for m in ("recall@1", "recall@10", "map@10"):  # overall = evaluate's own numbers (rounded)
                assert entry["evaluate"]["metrics"][m] == pytest.approx(mine["all"][m], abs=0.006)
            assert set(mine) == {"all", "add", "remove", "attribute", "move", "two edits"}
            per_seed[seed] = mine
        assert sorted(per_seed) == (["-"] if name in ("image", "sum") else ["0", "1"])
        for g, metrics in res["aggregate"].items():
            for m in ("recall@1", "recall@5", "recall@10", "recall@50", "map@10"):
                vals = [per_seed[s][g][m] for s in sorted(per_seed)]
                assert metrics[m]["mean"] == pytest.approx(statistics.mean(vals), abs=1e-4)
                assert metrics[m]["std"] == pytest.approx(statistics.stdev(vals) if len(vals) > 1 else 0.0, abs=1e-4)
    # "test-needs-p2w" returned the plain "sum" spec: same rankings as the untrained sum
    assert payload["results"]["test-needs-p2w"]["aggregate"]["all"]["recall@10"]["mean"] == \
        payload["results"]["sum"]["aggregate"]["all"]["recall@10"]["mean"]

    # --resume: pic2word is not trained again; the same checkpoints give the same numbers
    assert json.loads((out / "seed-1" / "pic2word" / "zeroshot-spec.json").read_text())["spec"] == \
        payload["training"]["pic2word/seed-1"]["spec"]
    rc = main(["experiment", "generative", "--quick", "--out", str(out), "--world", str(small_world),
               "--trainers", "pic2word", "--untrained", "", "--seeds", "0", "1", "--threads", "1", "--no-progress",
               "--options", json.dumps(options), "--resume"])
    again = json.loads((out / "results.json").read_text())
    assert rc == 0 and again["failures"] == [] and list(again["results"]) == ["pic2word"]
    assert all(again["training"][f"pic2word/seed-{s}"]["reused"] for s in (0, 1))
    assert again["results"]["pic2word"]["aggregate"] == payload["results"]["pic2word"]["aggregate"]


def test_unknown_trainer_is_an_error(small_world, tmp_path, capsys):
    rc = main(["experiment", "generative", "--quick", "--out", str(tmp_path / "x"), "--world", str(small_world),
               "--trainers", "no-such-method", "--no-progress"])
    assert rc == 2
    assert "unknown zero-shot trainer(s) ['no-such-method']" in capsys.readouterr().err


def test_oracles_are_labelled_and_kept_out_of_the_ranking():
    from cirlab.experiments.generative import aggregate, markdown
    from cirlab.methods.base import oracle_parts
    from cirlab.methods.proxies.rewriters import WorldRuleRewriter

    rewriter = WorldRuleRewriter().config()
    nested = {"name": "ip-cir", "generator_config": {"name": "world-render", "oracle": "renderer",
                                                     "rewriter": rewriter}, "rewriter_config": rewriter}
    assert oracle_parts(nested) == ["renderer", rewriter["oracle"]]
    assert oracle_parts({"name": "pic2word", "prompts": {"image": "a photo of $"}}) == []

    def entry(r10: float, oracle: list[str]) -> dict:
        groups = {"all": {"queries": 10, **{m: r10 for m in ("recall@1", "recall@5", "recall@10", "recall@50",
                                                                "map@10")}}}
        return {"trained": False, "specs": {}, "per_seed": {}, "oracle": oracle, "aggregate": aggregate({"-": groups})}

    payload = {"backbone": "b", "test_split": "t", "queries": 10, "gallery": 5, "train_split": "tr", "seeds": [0],
               "command": "c", "quick": False, "groups": {}, "failures": [],
               "results": {"image": entry(30.0, []), "ip-cir": entry(90.0, ["renderer"]), "sum": entry(40.0, [])}}
    md = markdown(payload)
    assert "| ip-cir (oracle) |" in md
    assert "oracles excluded): sum > image" in md and "- `ip-cir`: renderer" in md


def test_resume_reuses_only_what_was_trained_on_the_same_train_split_and_backbone(tmp_path):
    """``train_identity`` follows the gallery and images, not the triplets; a record reused under ``--resume`` must
    match the seed, budget, backbone and that identity."""
    from cirlab.experiments.generative import SPEC_FILE, _previous, train_identity
    from cirlab.world import WorldConfig, generate_world

    worlds = {}
    for name, cfg in {"a": WorldConfig(seed=5, brief=0.0), "b": WorldConfig(seed=5, brief=1.0),
                      "c": WorldConfig(seed=6)}.items():
        worlds[name] = tmp_path / name
        generate_world(worlds[name], cfg.small(8), ("train",), progress=False)
    ids = {k: train_identity(w / "train") for k, w in worlds.items()}
    # the brief share changes the triplets' texts only: same gallery and images, same identity
    assert (worlds["a"] / "train" / "triplets.jsonl").read_bytes() != (worlds["b"] / "train" / "triplets.jsonl").read_bytes()
    assert ids["a"] == ids["b"] and ids["a"] != ids["c"] and len(ids["a"]) == 64
    (worlds["b"] / "train" / "images" / "train-000000.png").write_bytes(b"not the image")  # identity is recorded
    assert train_identity(worlds["b"] / "train") == ids["b"]                               # at generation, not re-hashed
    assert train_identity(tmp_path / "nowhere") is None

    out = tmp_path / "run"
    out.mkdir()
    budget = {"quick": True, "options": None, "seed": 0, "backbone": "tiny:world", "train": ids["a"]}
    (out / SPEC_FILE).write_text(json.dumps({"trainer": "pic2word", "spec": "pic2word:x", "seconds": 1.0, **budget}))
    assert _previous(out, budget)["spec"] == "pic2word:x"
    assert _previous(out, {**budget, "train": ids["c"]}) is None
    assert _previous(out, {**budget, "backbone": "tiny:alt-600"}) is None
    assert _previous(out, {**budget, "seed": 1}) is None
    # a record written before the backbone and the train split were recorded is not reused
    (out / SPEC_FILE).write_text(json.dumps({"trainer": "pic2word", "spec": "pic2word:x", "seconds": 1.0,
                                             "quick": True, "options": None, "seed": 0}))
    assert _previous(out, budget) is None
