"""Benchmark metrics: hand-computed cases, and an independent transcription of each protocol
(written here from the protocol text, reading the raw annotation JSON itself) compared with
``cirlab eval-predictions`` on the real val annotations with random rankings."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cirlab.benchmarks.protocols import circo_metrics, cirr_metrics, cirr_subset_ranking, fashioniq_metrics
from cirlab.data.record import CIRTriplet

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("CIRLAB_TEST_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))
needs_files = pytest.mark.skipif(not BENCH.is_dir(), reason=f"real benchmark annotations not found at {BENCH} "
                                                           f"(set CIRLAB_TEST_BENCHMARKS)")


# ---------------------------------------------------------------------------------------------
# independent transcriptions of the protocols (raw JSON in, percent out)
# ---------------------------------------------------------------------------------------------
def naive_cirr(captions: list[dict], recall: dict, subset: dict | None) -> dict:
    out = {}
    for k in (1, 5, 10, 50):
        hit = 0
        for q in captions:
            if q["target_hard"] in recall[str(q["pairid"])][:k]:
                hit += 1
        out[f"recall@{k}"] = hit * 100.0 / len(captions)
    if subset is not None:
        for k in (1, 2, 3):
            hit = 0
            for q in captions:
                if q["target_hard"] in subset[str(q["pairid"])][:k]:
                    hit += 1
            out[f"recall_subset@{k}"] = hit * 100.0 / len(captions)
        out["avg"] = (out["recall@5"] + out["recall_subset@1"]) / 2.0
    return out


def naive_cirr_from_scores(captions: list[dict], names: list[str], score) -> tuple[dict, dict]:
    """Full rankings from a score function: reference removed; subset = members minus reference in that order."""
    recall, subset = {}, {}
    for q in captions:
        full = sorted([n for n in names if n != q["reference"]], key=lambda n: -score(q, n))
        recall[str(q["pairid"])] = full[:50]
        members = [m for m in q["img_set"]["members"] if m != q["reference"]]
        subset[str(q["pairid"])] = [n for n in full if n in members]
    return recall, subset


def naive_ap(ranked: list, gt: list, k: int) -> float:
    score, found = 0.0, 0
    for i in range(min(k, len(ranked))):
        if ranked[i] in gt:
            found += 1
            score += found / (i + 1)
    return score / min(len(gt), k)


def naive_circo(queries: list[dict], preds: dict) -> dict:
    out = {}
    for k in (5, 10, 25, 50):
        out[f"map@{k}"] = 100.0 * sum(naive_ap(preds[str(q["id"])], q["gt_img_ids"], k) for q in queries) / len(queries)
    for k in (5, 10, 25, 50):
        out[f"recall@{k}"] = 100.0 * sum(q["target_img_id"] in preds[str(q["id"])][:k] for q in queries) / len(queries)
    aspects = sorted({a for q in queries for a in q["semantic_aspects"]})
    for a in aspects:
        qs = [q for q in queries if a in q["semantic_aspects"]]
        out[f"map@10/{a}"] = 100.0 * sum(naive_ap(preds[str(q["id"])], q["gt_img_ids"], 10) for q in qs) / len(qs)
    return out


def naive_fashioniq(captions: dict[str, list[dict]], preds: dict[str, list[list[str]]]) -> dict:
    out = {}
    for cat in ("dress", "shirt", "toptee"):
        for k in (10, 50):
            hits = [c["target"] in preds[cat][i][:k] for i, c in enumerate(captions[cat])]
            out[f"{cat}/recall@{k}"] = 100.0 * sum(hits) / len(hits)
    for k in (10, 50):
        out[f"average/recall@{k}"] = (out[f"dress/recall@{k}"] + out[f"shirt/recall@{k}"] +
                                      out[f"toptee/recall@{k}"]) / 3
    out["avg"] = (out["average/recall@10"] + out["average/recall@50"]) / 2
    return out


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


# ---------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------
def test_cirr_hand_computed():
    t1 = CIRTriplet("1", "r1", "c", ("t1",), {"members": ["r1", "t1", "a", "b", "c", "d"]})
    t2 = CIRTriplet("2", "r2", "c", ("t2",), {"members": ["r2", "t2", "a", "b", "c", "d"]})
    rank = {"1": ["t1"] + [f"x{i}" for i in range(49)],           # hit at 1
            "2": [f"x{i}" for i in range(7)] + ["t2"] + [f"y{i}" for i in range(42)]}  # hit at 8
    sub = {"1": ["a", "t1", "b"], "2": ["t2", "a", "b"]}
    m = cirr_metrics([t1, t2], rank, sub)
    assert m["recall@1"] == 50.0 and m["recall@5"] == 50.0 and m["recall@10"] == 100.0 and m["recall@50"] == 100.0
    assert m["recall_subset@1"] == 50.0 and m["recall_subset@2"] == 100.0 and m["recall_subset@3"] == 100.0
    assert m["avg"] == 50.0
    assert "recall_subset@1" not in cirr_metrics([t1, t2], rank)


def test_cirr_subset_order_comes_from_the_global_ranking():
    members = ["ref", "m1", "m2", "m3", "m4", "m5"]
    head = ["g0", "m3", "g1", "m1"]                  # the top of the global ranking, reference already removed
    scores = {"m1": 0.9, "m2": 0.1, "m3": 0.95, "m4": 0.3, "m5": 0.3}  # m4/m5 tie: gallery position decides
    pos = {"m4": 7, "m5": 2, "m1": 0, "m2": 1, "m3": 3}
    assert cirr_subset_ranking(head, members, "ref", scores, pos) == ["m3", "m1", "m5", "m4", "m2"]


def test_circo_hand_computed():
    q = CIRTriplet("0", "r", "c", ("a", "b", "c"), {"target": "a", "semantic_aspects": ["cardinality", "negation"]})
    q2 = CIRTriplet("1", "r", "c", ("z",), {"target": "z", "semantic_aspects": ["negation"]})
    ranked = {"0": ["b", "x", "a", "y", "z"] + [f"w{i}" for i in range(45)],  # GT at ranks 1 and 3
              "1": [f"w{i}" for i in range(50)]}
    m = circo_metrics([q, q2], ranked)
    ap5 = (1 / 1 + 2 / 3) / 3                         # min(|GT|=3, 5) = 3
    assert m["map@5"] == pytest.approx(100 * ap5 / 2)
    assert m["map@50"] == pytest.approx(100 * ap5 / 2)
    assert m["recall@5"] == 50.0                      # the target 'a' is at rank 3; query 1 misses
    assert m["map@10/cardinality"] == pytest.approx(100 * ap5)
    assert m["map@10/negation"] == pytest.approx(100 * ap5 / 2)
    # a single GT: AP@K divides by min(1, K) = 1
    q3 = CIRTriplet("2", "r", "c", ("g",), {"target": "g", "semantic_aspects": []})
    m3 = circo_metrics([q3], {"2": ["x", "g"] + [f"w{i}" for i in range(48)]})
    assert m3["map@5"] == pytest.approx(50.0) and m3["recall@5"] == 100.0


def test_fashioniq_hand_computed():
    def trip(cat, n, target):
        return CIRTriplet(f"{cat}/{n}", "r", "c", (target,), {"category": cat})
    parts = {c: [trip(c, 0, "t"), trip(c, 1, "u")] for c in ("dress", "shirt", "toptee")}
    far = [f"x{i}" for i in range(20)]
    rank = {"dress/0": ["t"] + far, "dress/1": far + ["u"],      # 10: 1 of 2; 50: 2 of 2
            "shirt/0": far, "shirt/1": far,                     # 0, 0
            "toptee/0": ["t"], "toptee/1": ["u"]}               # 100, 100
    m = fashioniq_metrics(parts, rank)
    assert m["dress/recall@10"] == 50.0 and m["dress/recall@50"] == 100.0
    assert m["shirt/recall@50"] == 0.0 and m["toptee/recall@10"] == 100.0
    assert m["average/recall@10"] == pytest.approx(50.0) and m["average/recall@50"] == pytest.approx(200 / 3)
    assert m["avg"] == pytest.approx((50.0 + 200 / 3) / 2)
    only = fashioniq_metrics({"dress": parts["dress"]}, rank)
    assert "average/recall@10" not in only


# ---------------------------------------------------------------------------------------------
# real annotations, random rankings, the CLI in a real process, the independent transcription
# ---------------------------------------------------------------------------------------------
def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cirlab", *argv], capture_output=True, text=True, timeout=120)


@needs_files
def test_cirr_eval_predictions_random_matches_transcription(tmp_path, capsys):
    caps = json.loads((BENCH / "cirr/captions/cap.rc2.val.json").read_text())
    names = list(json.loads((BENCH / "cirr/image_splits/split.rc2.val.json").read_text()))
    rng = random.Random(0)
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for q in caps:
        pool = [n for n in names if n != q["reference"]]
        # bias towards the target so every metric is away from 0
        top = rng.sample(pool, 50)
        if rng.random() < 0.3 and q["target_hard"] not in top:
            top[rng.randrange(50)] = q["target_hard"]
        recall[str(q["pairid"])] = top
        members = [m for m in q["img_set"]["members"] if m != q["reference"]]
        rng.shuffle(members)
        subset[str(q["pairid"])] = members[:3]
    (tmp_path / "r.json").write_text(json.dumps(recall))
    (tmp_path / "s.json").write_text(json.dumps(subset))
    t0 = time.time()
    res = run_cli("eval-predictions", "--benchmark", "cirr", "--split", "val", "--data-root", str(BENCH / "cirr"),
                  "--predictions", str(tmp_path / "r.json"), "--subset-predictions", str(tmp_path / "s.json"),
                  "--json")
    seconds = time.time() - t0
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert_same(got, naive_cirr(caps, recall, subset))
    assert 15 < got["recall_subset@1"] < 25 and got["recall@50"] > 25
    assert seconds < 30, f"eval-predictions took {seconds:.1f}s"
    # without the subset file: no subset metrics, and a warning saying why
    from cirlab.cli import main

    assert main(["eval-predictions", "--benchmark", "cirr", "--split", "val", "--data-root", str(BENCH / "cirr"),
                 "--predictions", str(tmp_path / "r.json"), "--json"]) == 0
    out = capsys.readouterr()
    assert "recall_subset@K and avg are not computed" in out.err
    assert_same(json.loads(out.out), naive_cirr(caps, recall, None))


@needs_files
def test_cirr_subset_from_scores_matches_full_ranking():
    """The top-50 + member-score construction equals ordering members by a full ranking."""
    from cirlab.benchmarks import get_benchmark

    caps = json.loads((BENCH / "cirr/captions/cap.rc2.val.json").read_text())[:300]
    split = get_benchmark("cirr").load(BENCH / "cirr", "val")
    names = split.parts["all"].gallery.ids
    rng = random.Random(1)
    table = {(q["pairid"], n): rng.random() for q in caps for n in names}
    score = lambda q, n: table[(q["pairid"], n)]  # noqa: E731
    want_recall, want_subset = naive_cirr_from_scores(caps, names, score)
    pos = {n: i for i, n in enumerate(names)}
    trips = {t.id: t for t in split.triplets}
    for q in caps:
        t = trips[str(q["pairid"])]
        head = want_recall[t.id]
        group = [m for m in t.meta["members"] if m != t.reference]
        got = cirr_subset_ranking(head, t.meta["members"], t.reference, {m: score(q, m) for m in group}, pos)
        assert got == want_subset[t.id]
    below = sum(any(m not in want_recall[str(q["pairid"])] for m in want_subset[str(q["pairid"])]) for q in caps)
    assert below > 200  # most queries have members ranked below 50: the case that needs member scores


@needs_files
def test_circo_eval_predictions_random_matches_transcription(tmp_path):
    from cirlab.cli import main

    queries = json.loads((BENCH / "circo/annotations/val.json").read_text())
    pool = sorted({g for q in queries for g in q["gt_img_ids"]} | set(range(1000, 3000)))
    rng = random.Random(2)
    preds = {}
    for q in queries:
        row = rng.sample(pool, 50)
        for g in q["gt_img_ids"]:          # put some GT in, at random depths
            if rng.random() < 0.3 and g not in row:
                row[rng.randrange(50)] = g
        preds[str(q["id"])] = row
    f = tmp_path / "p.json"
    f.write_text(json.dumps(preds))
    res = run_cli("eval-predictions", "--benchmark", "circo", "--split", "val", "--data-root", str(BENCH / "circo"),
                  "--predictions", str(f), "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert_same(got, naive_circo(queries, preds))
    assert got["map@50"] > 1
    # duplicates make AP meaningless: rejected, naming the query
    q0 = str(queries[0]["id"])
    preds[q0] = preds[q0][:49] + preds[q0][:1]
    f.write_text(json.dumps(preds))
    assert main(["eval-predictions", "--benchmark", "circo", "--split", "val", "--data-root", str(BENCH / "circo"),
                 "--predictions", str(f)]) == 2


@needs_files
def test_fashioniq_eval_predictions_random_matches_transcription(tmp_path, capsys):
    caps = {c: json.loads((BENCH / f"fashioniq/captions/cap.{c}.val.json").read_text())
            for c in ("dress", "shirt", "toptee")}
    rng = random.Random(3)
    preds = {}
    for c in caps:
        gallery = json.loads((BENCH / f"fashioniq/image_splits/split.{c}.val.json").read_text())
        rows = []
        for e in caps[c]:
            row = rng.sample(gallery, 50)
            if rng.random() < 0.4 and e["target"] not in row:
                row[rng.randrange(50)] = e["target"]
            rows.append(row)
        preds[c] = rows
    f = tmp_path / "p.json"
    f.write_text(json.dumps(preds))
    res = run_cli("eval-predictions", "--benchmark", "fashioniq", "--split", "val", "--data-root",
                  str(BENCH / "fashioniq"), "--predictions", str(f), "--json")
    assert res.returncode == 0, res.stderr
    assert_same(json.loads(res.stdout), naive_fashioniq(caps, preds))
    # misaligned lists (one entry short) are rejected with the category named
    preds["shirt"] = preds["shirt"][:-1]
    f.write_text(json.dumps(preds))
    from cirlab.cli import main

    assert main(["eval-predictions", "--benchmark", "fashioniq", "--split", "val", "--data-root",
                 str(BENCH / "fashioniq"), "--predictions", str(f)]) == 2
    assert "'shirt' must be a list of 2038 rankings" in capsys.readouterr().err
