"""An index directory is ours, whole and unchanged, or a command says so: ownership, checksums, lock,
--verify / --repair, and gallery paths that survive a change of working directory."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirlab.cli import main
from cirlab.index import load_index
from cirlab.index.base import MANIFEST
from cirlab.index.exact import FEATURES


def _tree(d: Path) -> dict[str, str]:
    """Every file under ``d`` and its SHA-256 (to prove nothing was deleted or changed)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory, tiny_config):
    from cirlab.backbones import create_backbone

    d = tmp_path_factory.mktemp("bb")
    create_backbone("tiny:random", config=tiny_config).save(d)
    return d


@pytest.fixture()
def gallery(tmp_path) -> Path:
    """A folder of 10 distinct small images."""
    g = tmp_path / "gallery"
    g.mkdir()
    rng = np.random.default_rng(0)
    for n in range(10):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(g / f"img{n:02d}.png")
    return g


def _index(gallery: Path, out: Path, backbone_dir: Path, *extra: str) -> int:
    return main(["index", str(gallery), "--out", str(out), "--backbone", f"tiny:{backbone_dir}", "--batch-size", "5",
                 *extra])


def _search(index: Path, capsys) -> tuple[int, dict | str]:
    """(exit code, the JSON answer or the error text)."""
    capsys.readouterr()
    code = main(["search", "--index", str(index), "--reference", "img03", "--text", "a red circle", "-k", "5",
                 "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else out.err)


def test_out_onto_the_gallery_or_a_foreign_directory_is_refused_and_nothing_is_lost(gallery, backbone_dir, tmp_path,
                                                                                     capsys):
    before = _tree(gallery)
    (gallery / "chunks").mkdir()
    (gallery / "chunks" / "notes.txt").write_text("mine")
    before = _tree(gallery)
    assert _index(gallery, gallery, backbone_dir) == 2
    assert "holds gallery images" in capsys.readouterr().err
    assert _tree(gallery) == before
    # a directory that is not an index (user files, a chunks/ folder of the user's)
    other = tmp_path / "work"
    (other / "chunks").mkdir(parents=True)
    (other / "chunks" / "keep.bin").write_bytes(b"\x00\x01")
    (other / "report.txt").write_text("keep")
    kept = _tree(other)
    assert _index(gallery, other, backbone_dir) == 2
    err = capsys.readouterr().err
    assert "is not a cirlab index directory" in err and "report.txt" in err
    assert _tree(other) == kept
    # a new directory and then the same one again (an index of ours) are fine
    assert _index(gallery, tmp_path / "idx", backbone_dir) == 0
    assert _index(gallery, tmp_path / "idx", backbone_dir) == 0
    assert _tree(gallery) == before


def test_flipped_bytes_are_caught_by_search_index_and_verify_and_repair_restores(gallery, backbone_dir, tmp_path,
                                                                                  capsys):
    out = tmp_path / "idx"
    assert _index(gallery, out, backbone_dir) == 0
    code, good = _search(out, capsys)
    assert code == 0 and len(good["results"]) == 5
    feats = out / FEATURES
    raw = bytearray(feats.read_bytes())
    raw[-7] ^= 0xFF  # one byte of the last vector
    feats.write_bytes(bytes(raw))
    code, err = _search(out, capsys)
    assert code == 2 and "SHA-256 mismatch" in err and str(feats) in err and "--repair" in err
    assert main(["index", "--verify", "--out", str(out)]) == 2
    assert "verification failed" in capsys.readouterr().err
    assert _index(gallery, out, backbone_dir) == 2  # not "reused"
    assert "damaged" in capsys.readouterr().err
    assert feats.read_bytes() == bytes(raw)  # refusing changes nothing
    assert main(["index", "--repair", "--out", str(out)]) == 0  # gallery and backbone from the manifest
    assert main(["index", "--verify", "--out", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    code, again = _search(out, capsys)
    assert code == 0 and again["results"] == good["results"]


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "delete"])
def test_torn_features_give_a_named_error_and_repair_rebuilds(gallery, backbone_dir, tmp_path, capsys, damage):
    out = tmp_path / "idx"
    assert _index(gallery, out, backbone_dir) == 0
    feats = out / FEATURES
    data = feats.read_bytes()
    if damage == "truncate":
        feats.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        feats.write_bytes(b"")
    elif damage == "garbage":
        feats.write_bytes(b"\xff" * len(data))
    else:
        feats.unlink()
    code, err = _search(out, capsys)
    assert code == 2 and str(feats) in err and "Traceback" not in err
    assert main(["serve", "--index", str(out), "--port", "0"]) == 2  # refused before it binds a socket
    assert str(feats) in capsys.readouterr().err
    assert _index(gallery, out, backbone_dir, "--repair") == 0
    assert feats.read_bytes() == data


def test_an_old_manifest_without_checksums_gives_a_named_error_on_a_torn_file(gallery, backbone_dir, tmp_path,
                                                                                capsys):
    out = tmp_path / "idx"
    assert _index(gallery, out, backbone_dir) == 0
    m = json.loads((out / MANIFEST).read_text())
    for key in ("files", "paths_root"):
        m.pop(key)
    m["paths"] = [str(Path(p).resolve()) for p in sorted(gallery.glob("*.png"))]  # older: as given at build time
    (out / MANIFEST).write_text(json.dumps(m))
    code, res = _search(out, capsys)
    assert code == 0 and all(os.path.isfile(h["path"]) for h in res["results"])  # an old manifest still loads
    (out / FEATURES).write_bytes(b"\x00" * 5)
    code, err = _search(out, capsys)
    assert code == 2 and "cannot be read" in err and "--repair" in err
    # `cirlab index` rebuilds an index without checksums instead of trusting it
    assert _index(gallery, out, backbone_dir) == 0
    assert "files" in json.loads((out / MANIFEST).read_text())


def test_a_second_builder_is_refused_while_the_first_holds_the_lock(gallery, backbone_dir, tmp_path, capsys):
    from cirlab.fileutil import LOCK_NAME, DirLock

    out = tmp_path / "idx"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cirlab.fileutil import DirLock\n"
                               "with DirLock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _index(gallery, out, backbone_dir) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and "being indexed" in err
        assert not (out / MANIFEST).exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale, the next build takes it over (and says whose it was)
    with DirLock(out) as lock:
        assert lock.took_over == holder.pid
    assert _index(gallery, out, backbone_dir) == 0
    assert (out / LOCK_NAME).read_text() == ""  # released


def test_lock_waits_when_asked(tmp_path):
    from cirlab.fileutil import DirLock, LockedError

    first = DirLock(tmp_path / "d").acquire()
    with pytest.raises(LockedError):
        DirLock(tmp_path / "d", wait=0.3).acquire()
    first.release()
    with DirLock(tmp_path / "d", wait=0.3) as again:
        assert again.took_over is None


def test_paths_are_relative_to_the_index_so_any_working_directory_finds_the_images(gallery, backbone_dir, tmp_path,
                                                                                    capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _index(Path("gallery"), Path("idx"), backbone_dir) == 0  # relative paths, as users type them
    m = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert m["paths"][0] == os.path.join("..", "gallery", "img00.png") and m["gallery"] == os.path.join("..", "gallery")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, res = _search(Path("..") / "idx", capsys)
    assert code == 0
    for h in res["results"]:
        assert Path(h["path"]).resolve() == (gallery / f"{h['id']}.png").resolve()
    # index and gallery moved together: still found
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "gallery").rename(moved / "gallery")
    (tmp_path / "idx").rename(moved / "idx")
    code, res = _search(moved / "idx", capsys)
    assert code == 0 and all(Path(h["path"]).is_file() for h in res["results"])
    index, _ = load_index(moved / "idx")
    assert len(index) == 10
