"""The cirlab dataset format: round trip and errors that name the file and line."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from cirlab.data import CIRTriplet, Gallery, load_dataset, write_dataset
from cirlab.errors import DatasetError


@pytest.fixture()
def folder_dataset(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(img / f"{name}.png")
    (tmp_path / "triplets.jsonl").write_text(
        json.dumps({"id": "q1", "reference": "a", "caption": "make it b", "targets": ["b"]}) + "\n\n"
        + json.dumps({"id": "q2", "reference": "b", "caption": "two", "targets": ["a", "c"], "meta": {"kind": "x"}})
        + "\n")
    return tmp_path


def test_folder_gallery_and_triplets(folder_dataset):
    ds = load_dataset(folder_dataset)
    assert ds.gallery.ids == ["a", "b", "c"]
    assert [t.id for t in ds.triplets] == ["q1", "q2"]
    assert ds.triplets[1].targets == ("a", "c") and ds.triplets[1].meta == {"kind": "x"}


def test_write_then_load_round_trip(folder_dataset, tmp_path):
    ds = load_dataset(folder_dataset)
    out = folder_dataset  # gallery.jsonl next to images
    write_dataset(out, Gallery(ds.gallery.ids, ds.gallery.paths, ["x", None, "z"]), ds.triplets, info={"name": "mine"})
    again = load_dataset(out)
    assert again.name == "mine"
    assert again.gallery.captions == ["x", None, "z"]
    assert [t.to_json() for t in again.triplets] == [t.to_json() for t in ds.triplets]


def test_unknown_target_id_names_file_and_line(folder_dataset):
    p = folder_dataset / "triplets.jsonl"
    p.write_text(p.read_text() + json.dumps({"id": "q3", "reference": "a", "caption": "c", "targets": ["zz"]}) + "\n")
    with pytest.raises(DatasetError, match=r"triplets\.jsonl:4: target image id 'zz' is not in the gallery"):
        load_dataset(folder_dataset)


def test_unknown_reference_id(folder_dataset):
    (folder_dataset / "triplets.jsonl").write_text(
        json.dumps({"id": "q", "reference": "nope", "caption": "c", "targets": ["a"]}) + "\n")
    with pytest.raises(DatasetError, match=r":1: reference image id 'nope'"):
        load_dataset(folder_dataset)


def test_malformed_line_names_line(folder_dataset):
    p = folder_dataset / "triplets.jsonl"
    p.write_text(p.read_text() + '{"id": "q9", "reference": \n')
    with pytest.raises(DatasetError, match=r"triplets\.jsonl:4: malformed JSON"):
        load_dataset(folder_dataset)


@pytest.mark.parametrize("row, message", [
    ({"reference": "a", "caption": "c"}, "missing field 'id'"),
    ({"id": "q", "reference": "a", "caption": 3}, "field 'caption' must be str"),
    ({"id": "q", "reference": "a", "caption": "c", "targets": "b"}, "field 'targets' must be a list"),
    (["not", "an", "object"], "expected a JSON object"),
])
def test_bad_fields(folder_dataset, row, message):
    (folder_dataset / "triplets.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder_dataset)


def test_duplicate_triplet_id(folder_dataset):
    line = json.dumps({"id": "q", "reference": "a", "caption": "c", "targets": ["b"]})
    (folder_dataset / "triplets.jsonl").write_text(line + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=r":2: duplicate triplet id 'q' \(first on line 1\)"):
        load_dataset(folder_dataset)


def test_missing_image_file_is_named(folder_dataset):
    rows = [{"id": i, "path": f"images/{i}.png"} for i in ("a", "b", "c", "ghost")]
    (folder_dataset / "gallery.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match=r"1 gallery image\(s\) missing: 'ghost'"):
        load_dataset(folder_dataset)


def test_triplet_record_json():
    t = CIRTriplet("1", "r", "text", ("t1", "t2"), {"kind": "add"})
    assert t.to_json() == {"id": "1", "reference": "r", "caption": "text", "targets": ["t1", "t2"],
                           "meta": {"kind": "add"}}
