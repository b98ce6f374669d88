"""``cirlab reproduce`` end to end offline: a CLIP4Cir Combiner checkpoint in the official format
(random values) placed by hand in the zoo cache, placeholder images named after the real CIRR val ids,
published vs measured printed; the measured numbers equal the official forward's ranking. A pickle that
is not weights-only is refused. Entry names work as method specs in ``cirlab eval``."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cirlab.cli import main
from cirlab.errors import CirlabError
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


def test_reproduce_clip4cir_offline_prints_published_vs_measured(zoo, cirr_root, backbone_dir, encoder,  # noqa: F811
                                                                 tmp_path, capsys):
    root, caps, listing, made = cirr_root
    ref = official_combiner(encoder.embed_dim)
    torch.save({"Combiner": ref.state_dict()}, zoo / "files" / COMBINER_FILE)
    args = ["reproduce", ENTRY, "--benchmark", "cirr", "--split", "val", "--data-root", str(root), "--backbone",
            f"tiny:{backbone_dir}", "--drop-incomplete", "--index-dir", str(tmp_path / "idx"), "--out",
            str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"{ENTRY} on cirr val: backbone tiny:{backbone_dir}, method combiner:")
    assert lines[1].split() == ["metric", "published", "measured"]
    res = json.loads((tmp_path / "out/results.json").read_text())
    assert res["config"]["combiner"]["order"] == "text-image" and res["config"]["combiner"]["raw_input"] is True

    # independently: the official forward on raw features, cosine against the gallery, reference removed
    complete = [q for q in caps if {q["reference"], q["target_hard"], *q["img_set"]["members"]} <= made]
    names = [n for n in listing if n in made]
    paths = {n: root / listing[n] for n in names}
    raw_img = encoder.encode_images([paths[n] for n in names], normalize=False)
    row = {n: i for i, n in enumerate(names)}
    raw_txt = encoder.encode_texts([q["caption"] for q in complete], normalize=False)
    with torch.no_grad():
        query = ref.combine_features(raw_img[[row[q["reference"]] for q in complete]], raw_txt)
    scores = query @ F.normalize(raw_img, dim=-1).T
    pos = {q["pairid"]: i for i, q in enumerate(complete)}
    recall, subset = naive_cirr_from_scores(complete, names, lambda q, n: float(scores[pos[q["pairid"]], row[n]]))
    want = naive_cirr(complete, recall, subset)
    for k in ("recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1"):
        assert res["measured"][k] == pytest.approx(want[k], abs=1e-6), k
        assert next(ln for ln in lines if ln.startswith(k + " ")).split()[-1] == f"{res['measured'][k]:.2f}"
    got = json.loads(next((tmp_path / "out").glob("*.recall.json")).read_text())
    assert {k: v for k, v in got.items() if k not in ("version", "metric")} == recall

    # the entry name is a method spec anywhere: eval --benchmark ranks the same
    assert main(["eval", "--benchmark", "cirr", "--split", "val", "--data-root", str(root), "--backbone",
                 f"tiny:{backbone_dir}", "--methods", ENTRY, "--drop-incomplete", "--index-dir",
                 str(tmp_path / "idx"), "--out", str(tmp_path / "eval.json")]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())["results"][0]
    assert ev["method"] == ENTRY and ev["metrics"]["recall@5"] == pytest.approx(want["recall@5"], abs=0.01)


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


def test_cig_entry_writes_the_authors_fusion_weight_per_benchmark(zoo):
    from torch import nn

    from cirlab.zoo import materialize

    torch.manual_seed(0)
    for name in ("SEARLE_ViT-L14.pt", "lincir_large.pt"):     # the official {'Phi': ...} layout, L/14 widths
        phi = nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Dropout(0.5), nn.Linear(3072, 3072), nn.GELU(),
                            nn.Dropout(0.5), nn.Linear(3072, 768))
        torch.save({"Phi": {f"layers.{k}": v for k, v in phi.state_dict().items()}}, zoo / "files" / name)
    (zoo / "files/cig-sdxl").mkdir()
    configs = {}
    for bench in ("cirr", "circo"):
        m = materialize("cig:vit-l14", bench)
        assert m.method == f"cig:{zoo / 'configs' / ('cig-vit-l14-' + bench) / 'cig.json'}"
        configs[bench] = json.loads((zoo / "configs" / f"cig-vit-l14-{bench}" / "cig.json").read_text())
    assert configs["cirr"]["weight"] == 0.5 and configs["circo"]["weight"] == 0.7
    cfg = configs["circo"]
    searle_dir = cfg["inversion"].removeprefix("searle:")
    assert json.loads((Path(searle_dir) / "config.json").read_text())["method"] == "searle"
    assert cfg["generator"] == (f"diffusers:{zoo / 'files/cig-sdxl'},phi={zoo / 'imported/lincir_large.pt'},"
                                f"steps=50,size=512")
    assert cfg["seed"] == 1600


def test_imports_happen_once_and_leave_foreign_directories_alone(zoo):
    from cirlab.zoo import materialize

    torch.save({"Combiner": official_combiner(8).state_dict()}, zoo / "files" / COMBINER_FILE)
    first = materialize(ENTRY, "cirr", backbone="tiny:world")
    made = zoo / "imported" / COMBINER_FILE
    assert first.method == f"combiner:{made}" and (made / "model.safetensors").is_file()
    stamp = (made / "model.safetensors").stat().st_mtime_ns
    assert materialize(ENTRY, "cirr", backbone="tiny:world").method == first.method
    assert (made / "model.safetensors").stat().st_mtime_ns == stamp          # not converted again
    other = zoo / "imported" / "cirr_clip_RN50x4_fullft.pt"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    (zoo / "files" / "cirr_clip_RN50x4_fullft.pt").write_bytes(b"")
    with pytest.raises(CirlabError, match="cirr_clip_RN50x4_fullft.pt: exists but was not written by the zoo"):
        materialize(ENTRY, "cirr")
    assert (other / "notes.txt").read_text() == "mine"
