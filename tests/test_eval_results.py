"""An evaluation run on disk: `cirlab eval --out` writes the per-query rankings beside the results, and
`read_run` reads them back; `cirlab backbones` names the extra of a kind whose package is missing."""
from __future__ import annotations

import importlib.util
import json

import pytest

from cirlab.cli import main
from cirlab.errors import CirlabError
from cirlab.eval.results import read_run


def test_eval_out_saves_rankings_and_read_run_checks_them(small_world, tmp_path, capsys):
    data = small_world / "test"
    out = tmp_path / "run" / "results.json"
    assert main(["eval", "--data", str(data), "--backbone", "tiny:world", "--methods", "image,sum",
                 "--index-dir", str(tmp_path / "idx"), "--out", str(out), "--save-rankings",
                 str(tmp_path / "rank.json")]) == 0
    run = read_run(out.parent)  # the directory works as well as the file
    assert run.methods == ["image", "sum"] and run.index_dir == tmp_path / "idx"
    assert run.dataset == str(data)
    # the same rankings `--save-rankings` writes, for every query with targets
    assert run.rankings == json.loads((tmp_path / "rank.json").read_text())
    trips = [json.loads(x) for x in open(data / "triplets.jsonl")]
    ranked = run.rankings["sum"]
    assert set(ranked) == {t["id"] for t in trips if t["targets"]}
    # recall@10 recomputed from the saved rankings equals the reported one
    hits = sum(any(g in ranked[t["id"]][:10] for g in t["targets"]) for t in trips if t["targets"])
    assert round(100 * hits / len(ranked), 2) == run.results[1]["metrics"]["recall@10"]

    # a results file without rankings (written before they were saved) gets a clear error
    payload = json.loads(out.read_text())
    del payload["rankings"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(payload))
    with pytest.raises(CirlabError, match="old.json: has no per-query rankings"):
        read_run(old)
    # a rankings file that lacks a method is named
    (out.parent / payload_rankings(out)).write_text(json.dumps({"rankings": {"image": {}}}))
    with pytest.raises(CirlabError, match="no rankings for method\\(s\\) sum"):
        read_run(out)


def payload_rankings(results) -> str:
    return json.loads(results.read_text())["rankings"]


def test_backbones_lists_missing_kinds_with_install_hint(capsys):
    assert main(["backbones"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert {"tiny", "hf", "openclip", "conse"} <= set(lines)
    if importlib.util.find_spec("open_clip") is None:
        assert "pip install 'cirlab[openclip]'" in lines["openclip"]
    else:
        assert "not installed" not in lines["openclip"]


@pytest.mark.skipif(importlib.util.find_spec("fiftyone") is not None, reason="FiftyOne is installed here")
def test_fiftyone_commands_say_where_fiftyone_lives(tmp_path, capsys):
    for argv in (["export", "fiftyone", "--results", str(tmp_path)], ["fiftyone", "--results", str(tmp_path)]):
        assert main(argv) == 2
        assert "make install-fiftyone" in capsys.readouterr().err
