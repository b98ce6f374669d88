"""An index built by one `cirlab index` process is searched by another `cirlab search` process, for every
index kind; the answers are checked against a brute-force ranking computed here from the backbone."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cirlab.data import load_dataset

KINDS = {
    "exact": "exact",
    "faiss": "faiss:Flat",
    "milvus": "milvus:{out}/gallery.db",
}
TEXT = "make the red circle blue"


@pytest.fixture(scope="module")
def setup(small_world, tiny_config, tmp_path_factory):
    from cirlab.backbones import create_backbone

    d = tmp_path_factory.mktemp("xproc-bb")
    create_backbone("tiny:random", config=tiny_config, seed=11).save(d)
    bb = create_backbone(f"tiny:{d}")
    ds = load_dataset(small_world / "test")
    feats = F.normalize(bb.encode_images([str(p) for p in ds.gallery.paths]).float(), dim=-1)
    return bb, ds, feats


def _cirlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "cirlab", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def _expected(setup, ref_pos: int, k: int, drop: bool, text_weight: float = 0.5) -> list[str]:
    """`sum` = normalize(image/2 + text/2) (`image`: text weight 0), cosine against every gallery image."""
    bb, ds, feats = setup
    txt = F.normalize(bb.encode_texts([TEXT]).float(), dim=-1)[0]
    q = F.normalize((1 - text_weight) * feats[ref_pos] + text_weight * txt, dim=-1)
    scores = feats @ q
    if drop:
        scores[ref_pos] = -float("inf")
    top = torch.topk(scores, k).indices.tolist()
    return [ds.gallery.ids[i] for i in top], [float(scores[i]) for i in top]


@pytest.mark.parametrize("kind", list(KINDS))
def test_index_in_one_process_search_in_another(kind, setup, tmp_path):
    bb, ds, _ = setup
    out = tmp_path / "idx"
    spec = KINDS[kind].format(out=out)
    built = _cirlab("index", str(Path(ds.gallery.paths[0]).parents[1]), "--out", str(out), "--backbone", bb.spec,
                    "--index-type", spec, cwd=tmp_path)
    # third-party chatter stays off by default: faiss's loader, Milvus Lite's server lines and its
    # harmless "Method not implemented" gRPC traceback
    for noise in ("Loading faiss", "Could not load library", "MilvusLite server", "Method not implemented"):
        assert noise not in built.stderr, noise
    ref = ds.gallery.ids[5]
    p = _cirlab("search", "--index", str(out), "--reference", ref, "--text", TEXT, "-k", "5", "--json", cwd=tmp_path)
    got = json.loads(p.stdout)["results"]
    want_ids, want_scores = _expected(setup, 5, 5, drop=True)
    assert [r["id"] for r in got] == want_ids
    assert [r["score"] for r in got] == pytest.approx(want_scores, abs=1e-4)
    if kind != "exact":    # -v brings the libraries' own logs back
        loud = _cirlab("-v", "search", "--index", str(out), "--reference", ref, "--text", TEXT, "-k", "5", cwd=tmp_path)
        assert ("Loading faiss" if kind == "faiss" else "MilvusLite server started") in loud.stderr


def test_reference_file_from_the_gallery_is_dropped(setup, tmp_path):
    bb, ds, _ = setup
    out = tmp_path / "idx"
    _cirlab("index", str(Path(ds.gallery.paths[0]).parents[1]), "--out", str(out), "--backbone", bb.spec, cwd=tmp_path)
    path = Path(ds.gallery.paths[7]).resolve()
    copy = tmp_path / "elsewhere" / "copy.png"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    want_ids, _ = _expected(setup, 7, 4, drop=True, text_weight=0)
    kept_ids, _ = _expected(setup, 7, 4, drop=False, text_weight=0)
    assert kept_ids[0] == ds.gallery.ids[7]            # by image alone the reference itself is rank 1
    for reference in (str(path), str(copy)):          # the gallery file itself, and a copy of its bytes
        p = _cirlab("search", "--index", str(out), "--reference", reference, "--text", TEXT, "-k", "4", "--json",
                    "--method", "image", cwd=tmp_path)
        assert [r["id"] for r in json.loads(p.stdout)["results"]] == want_ids, reference
    p = _cirlab("search", "--index", str(out), "--reference", str(path), "--text", TEXT, "-k", "4", "--json",
                "--method", "image", "--keep-reference", cwd=tmp_path)
    assert [r["id"] for r in json.loads(p.stdout)["results"]] == kept_ids
