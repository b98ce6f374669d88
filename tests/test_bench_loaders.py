"""Loaders on the real annotation files: counts, records, layouts, errors; prompt templates."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cirlab.benchmarks import BENCHMARKS, get_benchmark
from cirlab.benchmarks.templates import PromptConfig, join_captions
from cirlab.data.record import CIRTriplet
from cirlab.errors import CirlabError, DatasetError

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("CIRLAB_TEST_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))
needs_files = pytest.mark.skipif(not BENCH.is_dir(), reason=f"real benchmark annotations not found at {BENCH} "
                                                           f"(set CIRLAB_TEST_BENCHMARKS)")


def test_registry():
    assert BENCHMARKS.names() == ["circo", "cirr", "fashioniq"]
    with pytest.raises(CirlabError, match="unknown benchmark 'coco'"):
        get_benchmark("coco")


@needs_files
def test_cirr_records():
    raw = json.loads((BENCH / "cirr/captions/cap.rc2.val.json").read_text())
    split = get_benchmark("cirr").load(BENCH / "cirr", "val")
    ds = split.parts["all"]
    assert len(ds.triplets) == 4181 and len(ds.gallery) == 2297
    t = ds.triplets[0]
    assert (t.id, t.reference, t.caption, t.targets) == ("12060", "dev-244-0-img0", "show three bottles of soft drink",
                                                        ("dev-1028-1-img1",))
    assert t.meta["members"] == raw[0]["img_set"]["members"] and t.meta["set_id"] == 36
    assert t.meta["caption_ext"]["3"] == "add a pub in the background"
    assert ds.gallery.path("dev-244-0-img0") == BENCH / "cirr/dev/dev-244-0-img0.png"
    assert [x.id for x in ds.triplets] == [str(e["pairid"]) for e in raw]
    test = get_benchmark("cirr").load(BENCH / "cirr", "test1").parts["all"]
    assert len(test.triplets) == 4148 and len(test.gallery) == 2315 and test.triplets[0].targets == ()


@needs_files
def test_cirr_official_layout_and_env_root(tmp_path, monkeypatch):
    """Annotations under <root>/cirr/ (the dataset repository's layout), root from the environment."""
    (tmp_path / "cirr").mkdir()
    for d in ("captions", "image_splits"):
        (tmp_path / "cirr" / d).symlink_to(BENCH / "cirr" / d)
    monkeypatch.setenv("CIRLAB_CIRR_ROOT", str(tmp_path))
    ds = get_benchmark("cirr").load(None, "val").parts["all"]
    assert len(ds.triplets) == 4181 and "caption_ext" not in ds.triplets[0].meta
    assert ds.gallery.path("dev-244-0-img0") == tmp_path / "dev/dev-244-0-img0.png"
    monkeypatch.delenv("CIRLAB_CIRR_ROOT")
    with pytest.raises(CirlabError, match="pass --data-root DIR or set CIRLAB_CIRR_ROOT"):
        get_benchmark("cirr").load(None, "val")
    with pytest.raises(CirlabError, match="unknown split 'test'; choose from train, val, test1"):
        get_benchmark("cirr").load(tmp_path, "test")


@needs_files
def test_bad_annotation_file_names_file_and_entry(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").symlink_to(BENCH / "cirr/image_splits")
    raw = json.loads((BENCH / "cirr/captions/cap.rc2.val.json").read_text())[:3]
    raw[2]["reference"] = "dev-nope"
    (tmp_path / "captions/cap.rc2.val.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"cap\.rc2\.val\.json\[2\]: reference 'dev-nope' is not in the val"):
        get_benchmark("cirr").load(tmp_path, "val")
    del raw[2]["caption"]
    raw[2]["reference"] = raw[1]["reference"]
    (tmp_path / "captions/cap.rc2.val.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"\[2\]: missing field 'caption'"):
        get_benchmark("cirr").load(tmp_path, "val")
    (tmp_path / "captions/cap.rc2.val.json").write_text("[{")
    with pytest.raises(DatasetError, match="cap.rc2.val.json:1: malformed JSON"):
        get_benchmark("cirr").load(tmp_path, "val")


@needs_files
def test_fashioniq_records(tmp_path):
    split = get_benchmark("fashioniq").load(BENCH / "fashioniq", "val")
    sizes = {c: (len(ds.triplets), len(ds.gallery)) for c, ds in split.parts.items()}
    assert sizes == {"dress": (2017, 3817), "shirt": (2038, 6346), "toptee": (1961, 5373)}
    t = split.parts["dress"].triplets[0]
    assert t == CIRTriplet("dress/0", "B005X4PL1G", "is shiny and silver with shorter sleeves and fit and flare",
                           ("B0084Y8XIU",))
    assert t.meta == {"category": "dress", "index": 0,
                      "captions": ["is shiny and silver with shorter sleeves", "fit and flare"]}
    test = get_benchmark("fashioniq").load(BENCH / "fashioniq", "test")
    assert test.parts["dress"].triplets[0].targets == () and not test.has_ground_truth()
    # image extension: the file on disk decides (png preferred, else jpg ...)
    root = tmp_path / "fiq"
    (root / "images").mkdir(parents=True)
    for d in ("captions", "image_splits"):
        (root / d).symlink_to(BENCH / "fashioniq" / d)
    (root / "images/B0084Y8XIU.jpg").write_bytes(b"x")
    g = get_benchmark("fashioniq").load(root, "val").parts["dress"].gallery
    assert g.path("B0084Y8XIU").name == "B0084Y8XIU.jpg" and g.path("B005X4PL1G").name == "B005X4PL1G.png"


@needs_files
def test_circo_records(tmp_path):
    raw = json.loads((BENCH / "circo/annotations/val.json").read_text())
    split = get_benchmark("circo").load(BENCH / "circo", "val", need_gallery=False)
    assert not split.has_gallery and "not found" in split.notes[0]
    t = split.triplets[0]
    assert (t.id, t.reference, t.targets) == ("0", "271520", ("355099", "528417", "534704"))
    assert t.meta["target"] == "355099" and "cardinality" in t.meta["semantic_aspects"]
    assert len(split.triplets) == 220 and [x.caption for x in split.triplets] == [q["relative_caption"] for q in raw]
    assert len(get_benchmark("circo").load(BENCH / "circo", "test", need_gallery=False).triplets) == 800
    with pytest.raises(DatasetError, match="image_info_unlabeled2017.json: COCO 2017 unlabeled listing not found"):
        get_benchmark("circo").load(BENCH / "circo", "val")
    # with a listing: gallery ids/paths from COCO's file; a reference outside it is an error naming the query
    root = tmp_path / "circo"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/val.json").symlink_to(BENCH / "circo/annotations/val.json")
    ids = sorted({q["reference_img_id"] for q in raw} | {g for q in raw for g in q["gt_img_ids"]})
    listing = root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
    listing.parent.mkdir(parents=True)
    listing.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]}))
    g = get_benchmark("circo").load(root, "val").parts["all"].gallery
    assert len(g) == len(ids) and g.path("271520") == root / "COCO2017_unlabeled/unlabeled2017/000000271520.jpg"
    listing.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg"} for i in ids if i != 271520]}))
    with pytest.raises(DatasetError, match=r"val.json\[0\]: reference_img_id 271520 is not in the COCO"):
        get_benchmark("circo").load(root, "val")


def test_templates():
    assert join_captions(" is red ", "longer", "and") == ["is red and longer"]
    assert join_captions("a", "b", "both") == ["a and b", "b and a"]
    assert join_captions("a", "b", "{c2}, {c1}") == ["b, a"]
    t = CIRTriplet("dress/0", "r", "x and y", ("t",), {"captions": ["x", " y"]})
    assert PromptConfig("a photo of $ that {caption}", "both").texts(t) == ["a photo of $ that x and y",
                                                                           "a photo of $ that y and x"]
    assert PromptConfig("photo-that").texts(CIRTriplet("1", "r", "is blue")) == ["a photo of $ that is blue"]
    assert PromptConfig().to_json(True) == {"template": "{caption}", "join": "and", "join_formats": ["{c1} and {c2}"],
                                            "join_strip": "whitespace"}
    with pytest.raises(CirlabError, match="needs '{caption}'"):
        PromptConfig("a photo of $")
    with pytest.raises(CirlabError, match="caption join 'or'"):
        PromptConfig(join="or")
