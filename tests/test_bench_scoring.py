"""Scoring prediction files as the servers do, on the real annotation files: the CIRR reference is removed
from a submitted ranking, CIRCO ids written as zero-padded strings are COCO ids, the CIRR server's 5 MB
limit, and validate-submission says when a CIRR submission lacks one of its two files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cirlab.cli import main

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("CIRLAB_TEST_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))
pytestmark = pytest.mark.skipif(not BENCH.is_dir(), reason=f"real benchmark annotations not found at {BENCH} "
                                                          f"(set CIRLAB_TEST_BENCHMARKS)")


def _score(capsys, bench: str, path: Path) -> tuple[int, dict, str]:
    rc = main(["eval-predictions", "--benchmark", bench, "--split", "val", "--data-root", str(BENCH / bench),
               "--predictions", str(path), "--json"])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else {}), out.err


def test_cirr_reference_in_a_submitted_list_is_removed_before_cutting(tmp_path, capsys):
    caps = json.loads((BENCH / "cirr/captions/cap.rc2.val.json").read_text())
    names = list(json.loads((BENCH / "cirr/image_splits/split.rc2.val.json").read_text()))
    pred = {"version": "rc2", "metric": "recall"}
    for n, q in enumerate(caps):
        others = [x for x in names if x not in (q["reference"], q["target_hard"])][:48]
        # even queries: the reference first, then the target (rank 1 once the reference is removed);
        # odd queries: the reference, one other image, then the target (rank 2)
        pred[str(q["pairid"])] = ([q["reference"], q["target_hard"], *others] if n % 2 == 0
                                  else [q["reference"], others[0], q["target_hard"], *others[1:]])
    p = tmp_path / "recall.json"
    p.write_text(json.dumps(pred))
    rc, got, err = _score(capsys, "cirr", p)
    assert rc == 0, err
    even = (len(caps) + 1) // 2
    assert got["recall@1"] == pytest.approx(100 * even / len(caps))
    assert got["recall@5"] == got["recall@50"] == 100.0
    assert "the protocol removes it from the ranking" in err


def test_circo_zero_padded_string_ids_are_coco_ids(tmp_path, capsys):
    queries = json.loads((BENCH / "circo/annotations/val.json").read_text())
    pool = sorted({g for q in queries for g in q["gt_img_ids"]} | {q["reference_img_id"] for q in queries})
    as_int, padded = {}, {}
    for n, q in enumerate(queries):
        fill = [i for i in pool if i not in q["gt_img_ids"]][:50]
        # every third query finds its first target at rank 3, every other query one at rank 1
        row = fill[:2] + [q["gt_img_ids"][0]] + fill[2:49] if n % 3 == 0 else [q["gt_img_ids"][-1]] + fill[:49]
        as_int[str(q["id"])] = row
        padded[str(q["id"])] = [f"{i:012d}" for i in row]
    (tmp_path / "int.json").write_text(json.dumps(as_int))
    (tmp_path / "pad.json").write_text(json.dumps(padded))
    rc, ints, err = _score(capsys, "circo", tmp_path / "int.json")
    assert rc == 0, err
    rc, pads, err = _score(capsys, "circo", tmp_path / "pad.json")
    assert rc == 0, err
    assert pads == ints
    # hand-computed: AP@5 of one hit at rank 1 is 1/min(|GT|, 5), at rank 3 it is (1/3)/min(|GT|, 5)
    ap5 = [(1 / 3 if n % 3 == 0 else 1.0) / min(len(q["gt_img_ids"]), 5) for n, q in enumerate(queries)]
    assert pads["map@5"] == pytest.approx(100 * sum(ap5) / len(queries))
    # the same image twice, once padded and once not, is a duplicate
    first = str(queries[0]["id"])
    dup = dict(padded, **{first: padded[first][:49] + [int(padded[first][0])]})
    (tmp_path / "dup.json").write_text(json.dumps(dup))
    rc, _, err = _score(capsys, "circo", tmp_path / "dup.json")
    assert rc == 2 and f"query {first}: duplicate id" in err


def test_cirr_server_size_limit_and_both_files_note(tmp_path, capsys):
    ex = BENCH / "cirr" / "submission_examples"
    recall = ex / "test1_pred_ranks_recall.json"
    args = ["validate-submission", "--benchmark", "cirr", "--split", "test1", "--data-root", str(BENCH / "cirr")]
    assert main([*args, str(recall)]) == 0
    out = capsys.readouterr().out
    assert "note: the CIRR server needs both files" in out and "'recall_subset' not given" in out
    assert main([*args, str(recall), str(ex / "test1_pred_ranks_recall_subset.json")]) == 0
    assert "note:" not in capsys.readouterr().out
    # the example, re-indented to over 5 MB: still valid JSON, over the server's 5 MB limit
    big = tmp_path / "big.json"
    big.write_text(json.dumps(json.loads(recall.read_text()), indent=2))
    size = big.stat().st_size
    assert 5_000_000 < size < 32 * 1024 * 1024
    assert main([*args, str(big)]) == 1
    assert f"{size} bytes, over the 5000000-byte limit" in capsys.readouterr().err
