"""``cirlab reproduce`` end to end offline: a CLIP4Cir Combiner checkpoint in the official format
(random values) placed by hand in the zoo cache, placeholder images named after the real CIRR val ids,
published vs measured printed; the measured numbers equal the official forward's ranking. A pickle that
is not weights-only is refused. Entry names work as method specs in ``cirlab eval``."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from cirlab.cli import main
from test_bench_e2e import backbone_dir, circo_test, cirr_root, encoder  # noqa: F401  (fixtures)
from test_bench_protocols import BENCH, naive_cirr, naive_cirr_from_scores
from test_zoo_clip4cir import OfficialCombiner

pytestmark = pytest.mark.skipif(not BENCH.is_dir(), reason=f"real benchmark annotations not found at {BENCH}")
ENTRY = "clip4cir:rn50x4-cirr"
COMBINER_FILE = "cirr_comb_RN50x4_fullft.pt"


@pytest.fixture()
def zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRLAB_ZOO_DIR", str(tmp_path / "zoo"))
    (tmp_path / "zoo/files").mkdir(parents=True)
    return tmp_path / "zoo"


def official_combiner(dim: int) -> OfficialCombiner:
    torch.manual_seed(3)
    ref = OfficialCombiner(dim, 4 * dim, 8 * dim).eval()     # CLIP4Cir's 4x / 8x widths
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return ref


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_reproduce_refuses_a_pickle_that_is_not_weights_only(zoo, cirr_root, backbone_dir, tmp_path,  # noqa: F811
                                                             capsys):
    root = cirr_root[0]
    with open(zoo / "files" / COMBINER_FILE, "wb") as f:
        pickle.dump({"Combiner": _Payload()}, f, protocol=2)
    rc = main(["reproduce", ENTRY, "--benchmark", "cirr", "--split", "val", "--data-root", str(root), "--backbone",
               f"tiny:{backbone_dir}", "--drop-incomplete", "--out", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert rc == 2 and "this must never run" not in cap.out
    assert f"{zoo / 'files' / COMBINER_FILE}: refused: this pickle is not weights-only" in cap.err
    assert not (zoo / "imported" / COMBINER_FILE).exists() and not (tmp_path / "out").exists()


def test_missing_weights_name_the_file_and_where_to_put_it(zoo, capsys):
    rc = main(["reproduce", ENTRY, "--benchmark", "cirr", "--data-root", str(zoo)])
    err = capsys.readouterr().err
    assert rc == 2
    for name in (COMBINER_FILE, "cirr_clip_RN50x4_fullft.pt"):   # every missing file, at once
        assert f"{name}: not in the zoo cache (no direct download); download it from " \
               f"https://drive.google.com/drive/folders/1ny2hhzP8HZBnXhjvDEni8P8G4_inCNTv and place it at " \
               f"{zoo / 'files' / name}" in err
    assert main(["reproduce", ENTRY, "--benchmark", "circo", "--data-root", str(zoo)]) == 2
    assert "has no inference preset for 'circo'" in capsys.readouterr().err


def test_published_vs_measured_rows():
    from cirlab.cli.zoo import comparison
    from cirlab.zoo import get_entry

    e = get_entry("searle:vit-l14")
    rows = comparison(e.published_for("cirr"), {"recall@1": 20.5, "recall@5": 44.0}, ["recall@1", "recall@5"])
    assert rows == [{"metric": "recall@1", "published": "24.24 (test1)", "measured": "20.50"},
                    {"metric": "recall@5", "published": "-", "measured": "44.00"}]


def test_reproduce_on_a_test_split_writes_the_server_files(zoo, backbone_dir, tmp_path, monkeypatch,  # noqa: F811
                                                           capsys):
    from cirlab.zoo import ZOO, Published, ZooEntry

    e = ZooEntry(name="test:text", method="text", backbone="tiny:world", paper="a paper",
                 presets={"circo": {"template": "a photo that {caption}"}},
                 published=(Published("circo", "test", {"map@10": 12.5}, "a paper, Table 9"),))
    monkeypatch.setitem(ZOO._factories, e.name, lambda: e)
    monkeypatch.setitem(ZOO._help, e.name, "")
    root = tmp_path / "circo"
    circo_test(root)
    assert main(["reproduce", "test:text", "--benchmark", "circo", "--split", "test", "--data-root", str(root)]) == 2
    assert "no public ground truth: pass --out DIR" in capsys.readouterr().err
    assert main(["reproduce", "test:text", "--benchmark", "circo", "--split", "test", "--data-root", str(root),
                 "--backbone", f"tiny:{backbone_dir}", "--out", str(tmp_path / "rep"), "--index-dir",
                 str(tmp_path / "idx")]) == 0
    out = capsys.readouterr().out
    assert next(ln for ln in out.splitlines() if ln.startswith("map@10")).split() == ["map@10", "12.5", "(test)", "-"]
    assert "published: a paper, Table 9" in out
    assert "upload to the test server" in out
    # the same file `cirlab submit` writes for this method and template
    assert main(["submit", "--benchmark", "circo", "--split", "test", "--data-root", str(root), "--backbone",
                 f"tiny:{backbone_dir}", "--method", "text", "--template", "a photo that {caption}", "--out",
                 str(tmp_path / "sub"), "--index-dir", str(tmp_path / "idx")]) == 0
    got = json.loads((tmp_path / "rep/circo-test-test-text.predictions.json").read_text())
    assert got == json.loads((tmp_path / "sub/circo-test.predictions.json").read_text()) and len(got) == 800
