"""The CLI end to end on a small world: generate, train, index, search, eval, demo."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cirlab.cli import main


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CIRLAB_CACHE": str(cwd or "."), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "cirlab", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    r = _run("world", "generate", "--out", str(root / "world"), "--queries", "40", "--seed", "2", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "test: " in r.stdout and (root / "world" / "test" / "triplets.jsonl").is_file()
    r = _run("train", "backbone", "--data", str(root / "world" / "train"), "--out", str(root / "bb"),
             "--max-steps", "3", "--batch-size", "16", "--width", "32", "--depth", "1", "--text-depth", "1",
             "--embed-dim", "16", cwd=root)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 3
    return root


def test_index_search_eval(trained):
    root = trained
    bb = f"tiny:{root / 'bb'}"
    test = root / "world" / "test"
    r = _run("index", str(test), "--out", str(root / "idx"), "--backbone", bb, cwd=root)
    assert r.returncode == 0, r.stderr
    n_gallery = sum(1 for _ in open(test / "gallery.jsonl"))
    assert f"indexed {n_gallery} images" in r.stdout and f"encoded {n_gallery} of {n_gallery} images" in r.stdout
    first = json.loads(open(test / "triplets.jsonl").readline())
    r = _run("search", "--index", str(root / "idx"), "--reference", first["reference"], "--text", first["caption"],
             "-k", "7", "--json", cwd=root)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ids = [h["id"] for h in out["results"]]
    assert len(ids) == 7 and first["reference"] not in ids and len(set(ids)) == 7
    assert all(os.path.isfile(h["path"]) for h in out["results"])
    scores = [h["score"] for h in out["results"]]
    assert scores == sorted(scores, reverse=True)
    # the same search through an image file instead of an id
    ref_path = test / "images" / f"{first['reference']}.png"
    r2 = _run("search", "--index", str(root / "idx"), "--reference", str(ref_path), "--text", first["caption"],
              "-k", "8", "--json", cwd=root)
    ids2 = [h["id"] for h in json.loads(r2.stdout)["results"]]
    assert first["reference"] not in ids2 and ids2[:7] == ids      # the gallery file is the reference: dropped
    r = _run("eval", "--data", str(test), "--backbone", bb, "--methods", "image,sum", "--index-dir",
             str(root / "idx"), "--out", str(root / "res.json"), "--save-rankings", str(root / "rank.json"), cwd=root)
    assert r.returncode == 0, r.stderr
    res = json.loads((root / "res.json").read_text())
    assert [x["method"] for x in res["results"]] == ["image", "sum"]
    m = res["results"][1]["metrics"]
    assert set(m) >= {"recall@1", "recall@5", "recall@10", "recall@50", "map@5", "map@10", "map@25", "map@50"}
    assert 0 <= m["recall@1"] <= m["recall@5"] <= m["recall@10"] <= m["recall@50"] <= 100
    # recompute recall@10 from the saved rankings
    rankings = json.loads((root / "rank.json").read_text())["sum"]
    trips = [json.loads(x) for x in open(test / "triplets.jsonl")]
    hits = sum(any(t in rankings[q["id"]][:10] for t in q["targets"]) for q in trips)
    assert round(100 * hits / len(trips), 2) == m["recall@10"]
    assert all(q["reference"] not in rankings[q["id"]] for q in trips)
    # eval into a fresh index directory: every feature comes from the shared feature cache, nothing is encoded
    r = _run("eval", "--data", str(test), "--backbone", bb, "--methods", "sum", "--index-dir", str(root / "idx-2"),
             "--out", str(root / "res-2.json"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert f"encoded 0 of {n_gallery} images ({n_gallery} reused)" in r.stderr
    assert json.loads((root / "res-2.json").read_text())["results"][0]["metrics"] == m


def test_demo_writes_results_and_report(trained):
    root = trained
    r = _run("demo", "--out", str(root / "demo"), "--backbone", f"tiny:{root / 'bb'}", "--queries", "40",
             "--seed", "2", "--world", str(root / "world"), cwd=root)  # the world made above, reused
    assert r.returncode == 0, r.stderr
    res = json.loads((root / "demo" / "results.json").read_text())
    assert [x["method"] for x in res["results"]] == ["image", "text", "sum", "weighted:0.7"]
    for x in res["results"]:
        assert x["backbone"].startswith("tiny:") and "recall@1" in x["metrics"] and "map@10" in x["metrics"]
    html = (root / "demo" / "report.html").read_text()
    assert html.count("<h2>") == 5 and "data:image/png;base64," in html and "class='ok'" in html
    assert "recall@10" in r.stdout


def test_clear_errors(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "nope")]) == 2
    assert "no such dataset directory" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path), "--reference", "x", "--text", "hi"]) == 2
    assert "no index here" in capsys.readouterr().err
    assert main(["world", "generate", "--out", str(tmp_path), "--splits", "bogus"]) == 2
    assert "unknown split" in capsys.readouterr().err


def test_method_lists_keep_spec_options_together():
    from cirlab.cli.common import split_methods

    assert split_methods("image, sum,,weighted:0.2") == ["image", "sum", "weighted:0.2"]
    assert split_methods("image,fusion-diff:/ck,mix=0.5,steps=1,searle-oti:50") == [
        "image", "fusion-diff:/ck,mix=0.5,steps=1", "searle-oti:50"]
    assert split_methods("ip-cir:/a=b/cfg.json,text") == ["ip-cir:/a=b/cfg.json", "text"]
