"""Bad input is named and nothing is mixed or lost: world generation over an existing directory, triplets
without targets, empty galleries and ids, and the CLI's named errors (exit 2, no traceback)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirlab.cli import main


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _world(out: Path, *extra: str) -> int:
    return main(["world", "generate", "--out", str(out), "--queries", "6", "--splits", "test", *extra])


def test_world_generate_over_other_settings_is_refused_and_nothing_is_mixed(tmp_path, capsys):
    out = tmp_path / "w"
    assert _world(out, "--resolution", "32") == 0
    before = _tree(out)
    for flags, said in ((["--seed", "1", "--resolution", "32"], "asked for seed 1, resolution 32"),
                        (["--resolution", "64"], "asked for seed 0, resolution 64")):
        capsys.readouterr()
        assert _world(out, *flags) == 2
        err = capsys.readouterr().err
        assert "generated with other settings (seed 0, resolution 32" in err and said in err
        assert _tree(out) == before
    assert _world(out, "--resolution", "32") == 0  # the same settings: reused as it is
    assert _tree(out) == before
    # a directory of someone else's files is not a world split
    (tmp_path / "mine" / "test").mkdir(parents=True)
    (tmp_path / "mine" / "test" / "notes.txt").write_text("keep")
    assert _world(tmp_path / "mine") == 2
    assert "is not a world split (it holds notes.txt)" in capsys.readouterr().err


def test_an_interrupted_world_resumes_only_with_its_own_settings(tmp_path, capsys, monkeypatch):
    import cirlab.world.generate as gen

    clean = tmp_path / "clean"
    assert _world(clean, "--resolution", "16") == 0

    def crash(*a, **kw):
        raise KeyboardInterrupt  # killed after the images, before the listings

    out = tmp_path / "w"
    monkeypatch.setattr(gen, "write_jsonl", crash)
    assert _world(out, "--resolution", "16") == 130
    monkeypatch.undo()
    assert not (out / "test" / "dataset.json").exists() and list((out / "test" / "images").glob("*.png"))
    partial = _tree(out)
    assert _world(out, "--resolution", "32") == 2
    assert "holds an interrupted world generated with other settings" in capsys.readouterr().err
    assert _tree(out) == partial
    assert _world(out, "--resolution", "16") == 0
    assert _tree(out) == _tree(clean)  # resumed: byte-identical to a clean run


def _dataset(root: Path, n_images: int, triplets: list[dict]) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for n in range(n_images):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"i{n}.png")
        rows.append(json.dumps({"id": f"i{n}", "path": f"images/i{n}.png"}))
    (root / "gallery.jsonl").write_text("\n".join(rows) + ("\n" if rows else ""))
    (root / "triplets.jsonl").write_text("".join(json.dumps(t) + "\n" for t in triplets))
    return root


def test_triplets_without_targets_and_empty_galleries_are_errors_not_numbers(tmp_path, capsys):
    ds = _dataset(tmp_path / "d", 4, [{"id": "q1", "reference": "i0", "caption": "x", "targets": ["i1"]},
                                      {"id": "q2", "reference": "i2", "caption": "y"}])
    before = _tree(ds)
    args = ["eval", "--methods", "sum", "--index-dir", str(tmp_path / "idx")]
    assert main([*args, "--data", str(ds)]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 triplets have no 'targets' ('q2')" in err
    assert not (tmp_path / "idx").exists()  # refused before encoding anything
    empty = _dataset(tmp_path / "e", 0, [])
    assert main([*args, "--data", str(empty)]) == 2
    assert "the gallery is empty" in capsys.readouterr().err
    assert _tree(ds) == before


@pytest.mark.parametrize("line, field", [
    ('{"id": "", "path": "images/i0.png"}', "field 'id' is an empty id"),
    ('{"id": "  ", "path": "images/i0.png"}', "field 'id' is an empty id"),
    ('{"id": true, "path": "images/i0.png"}', "field 'id' must be str/int, got bool"),
    ('{"id": "a", "path": ""}', "field 'path' is empty"),
])
def test_empty_ids_and_paths_name_file_and_line(tmp_path, line, field):
    from cirlab.data import read_gallery
    from cirlab.errors import DatasetError

    p = tmp_path / "gallery.jsonl"
    p.write_text('{"id": "ok", "path": "images/x.png"}\n' + line + "\n")
    with pytest.raises(DatasetError, match=f"{p}:2: {field}"):
        read_gallery(p)


def test_empty_reference_and_target_ids(tmp_path):
    from cirlab.data import read_triplets
    from cirlab.errors import DatasetError

    p = tmp_path / "triplets.jsonl"
    p.write_text('{"id": "q", "reference": "", "caption": "x", "targets": ["a"]}\n')
    with pytest.raises(DatasetError, match=f"{p}:1: field 'reference' is an empty id"):
        read_triplets(p)
    p.write_text('{"id": "q", "reference": "a", "caption": "x", "targets": [""]}\n')
    with pytest.raises(DatasetError, match=f"{p}:1: field 'targets' must be a list of non-empty ids"):
        read_triplets(p)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 5-image dataset, its index (tiny:world), and files for the error cases."""
    root = tmp_path_factory.mktemp("cli14")
    ds = _dataset(root / "d", 5, [{"id": "q1", "reference": "i0", "caption": "x", "targets": ["i1"]}])
    assert main(["index", str(ds), "--out", str(root / "idx")]) == 0
    (root / "bad.jsonl").write_bytes(b'{"id": "a", "path": "x.png"}\n{"id": "b", "path": "y\xff.png"}\n')
    for name, rows in (("missing", ["i0.png", "gone.png"]), ("corrupt", ["i0.png", "torn.png"]),
                       ("dirimg", ["i0.png", "sub.png"])):
        d = root / name
        d.mkdir()
        (d / "i0.png").write_bytes((ds / "images" / "i0.png").read_bytes())
        (d / "gallery.jsonl").write_text("".join(json.dumps({"id": f"g{n}", "path": r}) + "\n"
                                                 for n, r in enumerate(rows)))
    (root / "corrupt" / "torn.png").write_bytes((ds / "images" / "i1.png").read_bytes()[:40])
    (root / "dirimg" / "sub.png").mkdir()
    (root / "corrupt" / "triplets.jsonl").write_text(
        json.dumps({"id": "q", "reference": "g0", "caption": "x", "targets": ["g1"]}) + "\n")
    (root / "notimage.png").write_text("hello")
    return root


CASES = {
    "search, unknown method": (["search", "--index", "{r}/idx", "--reference", "i0", "--text", "x", "--method", "nope"],
                               "unknown method 'nope'"),
    "eval, unknown method": (["eval", "--data", "{r}/d", "--methods", "sum,nope", "--index-dir", "{r}/e1"],
                             "unknown method 'nope'"),
    "weighted:abc": (["search", "--index", "{r}/idx", "--reference", "i0", "--text", "x", "--method", "weighted:abc"],
                     "method 'weighted:abc'"),
    "weighted:5": (["search", "--index", "{r}/idx", "--reference", "i0", "--text", "x", "--method", "weighted:5"],
                   "must be in [0, 1], got 5.0"),
    "unknown backbone": (["index", "{r}/d", "--out", "{r}/i2", "--backbone", "nope:x"], "unknown backbone 'nope'"),
    "non-UTF-8 JSONL": (["index", "{r}/bad.jsonl", "--out", "{r}/i3"], "bad.jsonl:2: not UTF-8 text"),
    "missing image": (["index", "{r}/missing", "--out", "{r}/i4"], "missing/gone.png: missing"),
    "corrupt image, index": (["index", "{r}/corrupt", "--out", "{r}/i5"], "corrupt/torn.png"),
    "corrupt image, eval": (["eval", "--data", "{r}/corrupt", "--methods", "sum", "--index-dir", "{r}/e2"],
                            "corrupt/torn.png"),
    "directory as image": (["index", "{r}/dirimg", "--out", "{r}/i6"], "dirimg/sub.png: a directory"),
    "reference not an image": (["search", "--index", "{r}/idx", "--reference", "{r}/notimage.png", "--text", "x"],
                               "notimage.png"),
    "resolution 0": (["world", "generate", "--out", "{r}/w0", "--resolution", "0", "--queries", "5"],
                     "resolution must be an integer of at least 8"),
    "negative queries": (["world", "generate", "--out", "{r}/w1", "--queries", "-5"], "--queries must be at least 1"),
    "missing config": (["world", "generate", "--out", "{r}/w2", "--config", "{r}/nope.json"],
                       "nope.json: cannot be read"),
    "chunk size 0": (["index", "{r}/d", "--out", "{r}/i7", "--chunk-size", "0"], "--chunk-size must be at least 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_errors_are_named_with_exit_2(small, case, capsys):
    argv, needle = CASES[case]
    capsys.readouterr()
    assert main([a.replace("{r}", str(small)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    if case == "chunk size 0":
        assert "--index-spec" not in err


def test_tests_write_caches_only_under_their_temp_dirs(tmp_path_factory):
    from cirlab.paths import cache_root

    base = tmp_path_factory.getbasetemp().resolve()
    assert base in cache_root().resolve().parents


def test_a_generated_world_is_checksummed_and_checked_on_load(tmp_path, capsys):
    from cirlab.data import load_dataset
    from cirlab.errors import DatasetError

    assert _world(tmp_path / "w", "--resolution", "16") == 0
    root = tmp_path / "w" / "test"
    info = json.loads((root / "dataset.json").read_text())
    listed = [json.loads(line)["path"] for line in (root / "gallery.jsonl").read_text().splitlines()]
    assert set(info["files"]) == {"gallery.jsonl", "triplets.jsonl", *listed}
    for name, rec in info["files"].items():
        assert rec["sha256"] == hashlib.sha256((root / name).read_bytes()).hexdigest()
    ds = load_dataset(root)
    image = root / listed[3]
    raw = bytearray(image.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    image.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=f"{image}: content changed since it was written"):
        load_dataset(root)
    assert main(["eval", "--data", str(root), "--methods", "sum", "--index-dir", str(tmp_path / "i")]) == 2
    assert "the dataset changed since it was written" in capsys.readouterr().err
    raw[len(raw) // 2] ^= 0x01
    image.write_bytes(bytes(raw))  # restored: same bytes, a new mtime -> re-hashed, and intact
    assert len(load_dataset(root).triplets) == len(ds.triplets)
    with open(root / "triplets.jsonl", "a") as fh:
        fh.write("\n")
    with pytest.raises(DatasetError, match="triplets.jsonl: .* bytes, .* when it was written"):
        load_dataset(root)


def test_two_generators_of_one_world_at_once_give_one_consistent_world(tmp_path):
    import threading

    from cirlab.world import WorldConfig, generate_world

    cfg = WorldConfig(seed=4, resolution=16).small(6)
    clean = tmp_path / "clean"
    generate_world(clean, cfg, ("test",), progress=False)
    out = tmp_path / "w"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            generate_world(out, cfg, ("test",), progress=False)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _tree(out) == _tree(clean)
