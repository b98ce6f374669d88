"""Offline submission validation: the official examples pass, mutated copies fail with the right message."""
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
CIRR_EX = BENCH / "cirr" / "submission_examples"
CIRCO_EX = BENCH / "circo" / "submission_examples"


def validate(capsys, bench: str, split: str, *files: Path) -> tuple[int, str, str]:
    rc = main(["validate-submission", "--benchmark", bench, "--split", split, "--data-root", str(BENCH / bench),
               *map(str, files)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def cirr_examples():
    return (json.loads((CIRR_EX / "test1_pred_ranks_recall.json").read_text()),
            json.loads((CIRR_EX / "test1_pred_ranks_recall_subset.json").read_text()))


@pytest.fixture(scope="module")
def cirr_test1():
    return {str(q["pairid"]): q for q in json.loads((BENCH / "cirr/captions/cap.rc2.test1.json").read_text())}


def test_official_examples_validate(capsys):
    rc, out, err = validate(capsys, "cirr", "test1", CIRR_EX / "test1_pred_ranks_recall.json",
                            CIRR_EX / "test1_pred_ranks_recall_subset.json")
    assert rc == 0, err
    assert "OK" in out and "(recall), 4148 queries" in out and "(recall_subset), 4148 queries" in out
    for split in ("val", "test"):
        rc, out, err = validate(capsys, "circo", split, CIRCO_EX / f"submission_{split}.json")
        assert rc == 0, err
        assert f"circo {split}, {220 if split == 'val' else 800} queries" in out
    # the example of one split is not a submission for the other
    rc, _, err = validate(capsys, "circo", "val", CIRCO_EX / "submission_test.json")
    assert rc == 1 and "580 key(s) that are not query ids of circo val" in err


def _write(tmp_path: Path, obj, name="sub.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


@pytest.fixture(scope="module")
def cirr_split():
    from cirlab.benchmarks import get_benchmark

    return get_benchmark("cirr").load(BENCH / "cirr", "test1", need_gallery=False)


def check(split, path: Path) -> tuple[int, str, str]:
    """The library check behind `validate-submission` (the CLI itself is exercised above/below)."""
    from cirlab.benchmarks.validate import validate_file

    problems, _, _ = validate_file(split, path, server=True)
    return (0 if problems.ok else 1), "", "\n".join(problems.errors + problems.warnings)


def test_cirr_mutations_are_rejected(tmp_path, capsys, cirr_examples, cirr_test1, cirr_split):
    recall, subset = cirr_examples
    pid = "12063"
    ref = cirr_test1[pid]["reference"]

    def rejected(obj, *needles):
        rc, _, err = check(cirr_split, _write(tmp_path, obj))
        assert rc == 1, "mutation accepted"
        for n in needles:
            assert n in err, (n, err)

    missing = {k: v for k, v in recall.items() if k != pid}
    rejected(missing, "missing pairid(s) (1 of 4148): 12063")
    dup = dict(recall, **{pid: recall[pid][:49] + recall[pid][:1]})
    rejected(dup, f"pairid {pid}: duplicate id {recall[pid][0]!r} at positions 1 and 50")
    short = dict(recall, **{pid: recall[pid][:49]})
    rejected(short, f"pairid {pid}: 49 predictions, expected 50")
    rejected(dict(recall, version="rc1"), "field 'version' is 'rc1', expected 'rc2'")
    rejected({k: v for k, v in recall.items() if k != "version"}, "missing field 'version'")
    rejected(dict(recall, metric="recall@50"), "field 'metric' is 'recall@50', expected 'recall' or 'recall_subset'")
    foreign = dict(recall, **{pid: recall[pid][:49] + ["dev-244-0-img0"]})
    rejected(foreign, f"pairid {pid}: 'dev-244-0-img0' is not an image of the cirr test1 split")
    rejected(dict(recall, **{"99999999": recall[pid]}), "1 key(s) that are not pairids of cirr test1: '99999999'")
    ints = dict(recall, **{pid: list(range(50))})
    rejected(ints, f"pairid {pid}: item 0 is 0: the server expects image names (strings)")
    # the reference inside a recall list is accepted with a warning (the protocol removes it anyway)
    rc, _, err = check(cirr_split, _write(tmp_path, dict(recall, **{pid: [ref] + recall[pid][:49]})))
    assert rc == 0 and f"pairid {pid}: the reference {ref!r} is ranked at 1" in err
    # subset file: the reference among the three, a non-member, a wrong length
    sub_ref = dict(subset, **{pid: [ref] + subset[pid][:2]})
    rejected(sub_ref, f"pairid {pid}: {ref!r} is the reference image; recall_subset predictions must be set members "
                      f"other than the reference")
    outsider = next(n for n in recall[pid] if n not in cirr_test1[pid]["img_set"]["members"])
    rejected(dict(subset, **{pid: [outsider] + subset[pid][:2]}),
             f"pairid {pid}: {outsider!r} is not a member of this query's img_set")
    rejected(dict(subset, **{pid: subset[pid][:2]}), f"pairid {pid}: 2 predictions, expected 3")
    # many queries with the same problem: every kind named, long lists summarised
    all_short = {k: (v[:49] if isinstance(v, list) else v) for k, v in recall.items()}
    rc, _, err = validate(capsys, "cirr", "test1", _write(tmp_path, all_short))      # through the CLI
    assert rc == 1 and "4138 more pairids with the same problem (wrong length)" in err


def test_duplicate_keys_and_size_limit(tmp_path, capsys, cirr_examples):
    recall, _ = cirr_examples
    text = json.dumps(recall)
    first = '"12063": ' + json.dumps(recall["12063"])
    p = tmp_path / "dupkey.json"
    p.write_text(text[:-1] + ", " + first + "}")
    rc, _, err = validate(capsys, "cirr", "test1", p)
    assert rc == 1 and "key '12063' appears more than once (duplicate id)" in err
    ok = _write(tmp_path, recall, "ok.json")
    rc = main(["validate-submission", "--benchmark", "cirr", "--split", "test1", "--data-root", str(BENCH / "cirr"),
               "--max-bytes", "1000", str(ok)])
    assert rc == 1 and f"{ok.stat().st_size} bytes, over the 1000-byte limit" in capsys.readouterr().err


def test_circo_mutations_are_rejected(tmp_path, capsys):
    sub = json.loads((CIRCO_EX / "submission_test.json").read_text())

    def rejected(obj, *needles):
        rc, _, err = validate(capsys, "circo", "test", _write(tmp_path, obj))
        assert rc == 1, "mutation accepted"
        for n in needles:
            assert n in err, (n, err)

    rejected({k: v for k, v in sub.items() if k != "7"}, "missing query id(s) (1 of 800): 7")
    rejected(dict(sub, **{"7": sub["7"][:49]}), "query 7: 49 predictions, expected 50")
    rejected(dict(sub, **{"7": sub["7"][:49] + sub["7"][3:4]}),
             f"query 7: duplicate id '{sub['7'][3]}' at positions 4 and 50")
    rejected(dict(sub, **{"7": [str(x) for x in sub["7"]]}), "query 7: item 0 is")
    rejected(dict(sub, extra=sub["7"]), "1 key(s) that are not query ids of circo test: 'extra'")
    rejected(dict(sub, version="rc2"), "key(s) that are not query ids of circo test: 'version'")


def test_circo_ids_checked_against_listing(tmp_path, capsys):
    """With COCO's listing under the root, ids outside the gallery are named."""
    root = tmp_path / "circo"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "val.json").symlink_to(BENCH / "circo/annotations/val.json")
    queries = json.loads((BENCH / "circo/annotations/val.json").read_text())
    sub = json.loads((CIRCO_EX / "submission_val.json").read_text())
    ids = sorted({q["reference_img_id"] for q in queries} | {g for q in queries for g in q["gt_img_ids"]}
                 | {x for v in sub.values() for x in v})
    ids.remove(sub["3"][10])
    listing = root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
    listing.parent.mkdir(parents=True)
    listing.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]}))
    rc = main(["validate-submission", "--benchmark", "circo", "--split", "val", "--data-root", str(root),
               str(CIRCO_EX / "submission_val.json")])
    err = capsys.readouterr().err
    assert rc == 1 and f"query 3: '{sub['3'][10]}' is not an image of the COCO 2017 unlabeled gallery" in err


def test_fashioniq_has_no_server(capsys):
    rc = main(["validate-submission", "--benchmark", "fashioniq", "--split", "val", "--data-root",
               str(BENCH / "fashioniq"), "x.json"])
    assert rc == 2 and "fashioniq has no test server" in capsys.readouterr().err
