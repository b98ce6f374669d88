"""End to end on the real annotations: placeholder images named after the real ids, a small random
tiny backbone, ``cirlab eval --benchmark`` through the real loaders, ``data check``, ``submit``.

Which images exist (documented in docs/benchmarks.md):
- CIRR val: images of the first 40 queries (reference, target, set members) only, so the run uses
  ``--drop-incomplete``; the evaluated queries are exactly those whose images all exist, the gallery
  exactly the generated images, both recomputed here from the raw files.
- Fashion IQ val: the first 12 queries per category (candidate + target), ``--drop-incomplete`` too.
- CIRCO val: the COCO listing is written by the test (all 220 queries' references and ground truth
  plus 40 distractors) and every listed image exists, so the full val split is evaluated as is.
Rankings are checked against full rankings computed here with numpy from the backbone's features.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirlab.cli import main
from test_bench_protocols import BENCH, assert_same, naive_circo, naive_cirr, naive_cirr_from_scores, naive_fashioniq

pytestmark = pytest.mark.skipif(not BENCH.is_dir(), reason=f"real benchmark annotations not found at {BENCH} "
                                                          f"(set CIRLAB_TEST_BENCHMARKS)")
TEMPLATE = "a photo of $ that {caption}"


def placeholder(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def link(root: Path, src: Path, names) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).symlink_to(src / n)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory, tiny_config):
    from cirlab.backbones import create_backbone

    d = tmp_path_factory.mktemp("bb")
    create_backbone("tiny:random", config=tiny_config).save(d)
    return d


@pytest.fixture(scope="module")
def encoder(backbone_dir):
    from cirlab.backbones import create_backbone

    return create_backbone(f"tiny:{backbone_dir}")


def gallery_features(index_dir: Path, names: list[str]) -> np.ndarray:
    """The gallery features the run stored (the ranking, not the encoder, is what these tests check)."""
    from cirlab.index import load_index

    index, _ = load_index(index_dir)
    assert sorted(index.ids) == sorted(names)
    return index.vectors(names).numpy().astype(np.float64)


def text_features(encoder, texts: list[str]) -> np.ndarray:
    return encoder.encode_texts(texts).numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cirr_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cirr")
    link(root, BENCH / "cirr", ["captions", "image_splits", "captions_ext"])
    caps = json.loads((BENCH / "cirr/captions/cap.rc2.val.json").read_text())
    listing = json.loads((BENCH / "cirr/image_splits/split.rc2.val.json").read_text())
    made: set[str] = set()
    for q in caps[:40]:
        for n in [q["reference"], q["target_hard"], *q["img_set"]["members"]]:
            if n not in made:
                placeholder(root / listing[n], len(made))
                made.add(n)
    return root, caps, listing, made


def test_cirr_data_check(cirr_root, capsys):
    root, caps, listing, made = cirr_root
    rc = main(["data", "check", "--benchmark", "cirr", "--split", "val", "--data-root", str(root), "--json",
               "--list", "3"])
    report = json.loads(capsys.readouterr().out)
    complete = [q for q in caps if {q["reference"], q["target_hard"], *q["img_set"]["members"]} <= made]
    part = report["parts"]["all"]
    assert rc == 1 and not report["complete"]
    assert part["gallery"] == 2297 and part["missing_gallery_images"] == 2297 - len(made)
    assert part["missing_query_images"] == sum(q["reference"] not in made for q in caps)
    assert part["incomplete_queries"] == 4181 - len(complete) and report["usable_queries"] == len(complete)
    assert len(part["missing_gallery_list"]) == 3 and part["missing_gallery_list"][0] not in made
    assert report["can_evaluate"].startswith(f"only with --drop-incomplete: {4181 - len(complete)} of 4181 queries")
    rc = main(["data", "check", "--benchmark", "cirr", "--split", "val", "--data-root", str(root)])
    out = capsys.readouterr().out
    assert rc == 1 and f"gallery 2297 images, {2297 - len(made)} missing" in out and "can evaluate: only with" in out
    # eval refuses incomplete data unless asked, pointing at data check
    rc = main(["eval", "--benchmark", "cirr", "--split", "val", "--data-root", str(root), "--backbone", "tiny:random"])
    assert rc == 2 and "cirlab data check --benchmark cirr" in capsys.readouterr().err


def test_cirr_eval_end_to_end(cirr_root, backbone_dir, encoder, tmp_path, capsys):
    root, caps, listing, made = cirr_root
    rc = main(["eval", "--benchmark", "cirr", "--split", "val", "--data-root", str(root), "--backbone",
               f"tiny:{backbone_dir}", "--methods", "text,image", "--drop-incomplete", "--template", TEMPLATE,
               "--index-dir", str(tmp_path / "idx"), "--out", str(tmp_path / "res.json"),
               "--save-rankings", str(tmp_path / "preds")])
    assert rc == 0
    assert "INCOMPLETE DATA" in capsys.readouterr().err
    res = json.loads((tmp_path / "res.json").read_text())
    complete = [q for q in caps if {q["reference"], q["target_hard"], *q["img_set"]["members"]} <= made]
    assert res["queries"] == {"all": len(complete)} and res["gallery"] == {"all": len(made)}
    assert len(complete) >= 40 and res["complete"] is False and "NOT comparable" in res["notes"][-1]
    assert res["prompt"] == {"template": TEMPLATE} and res["protocol"]["exclude_reference"] is True
    # independent full rankings: gallery in split order, reference removed, members ordered by that ranking
    names = [n for n in listing if n in made]
    img = gallery_features(tmp_path / "idx/cirr-val-all", names)
    txt = text_features(encoder, [TEMPLATE.format(caption=q["caption"]) for q in complete])
    row = {n: i for i, n in enumerate(names)}
    text_q = {q["pairid"]: txt[i] for i, q in enumerate(complete)}
    for method, score in [("text", lambda q, n: float(img[row[n]] @ text_q[q["pairid"]])),
                          ("image", lambda q, n: float(img[row[n]] @ img[row[q["reference"]]]))]:
        want_recall, want_subset = naive_cirr_from_scores(complete, names, score)
        got_recall = json.loads((tmp_path / f"preds/cirr-val-{method}.recall.json").read_text())
        got_subset = json.loads((tmp_path / f"preds/cirr-val-{method}.recall_subset.json").read_text())
        assert got_recall["version"] == "rc2" and got_subset["metric"] == "recall_subset"
        assert {k: v for k, v in got_recall.items() if k not in ("version", "metric")} == want_recall
        assert {k: v for k, v in got_subset.items() if k not in ("version", "metric")} == \
               {k: v[:3] for k, v in want_subset.items()}
        metrics = next(r["metrics"] for r in res["results"] if r["method"] == method)
        assert_same(metrics, naive_cirr(complete, want_recall, want_subset))


def test_fashioniq_eval_end_to_end(backbone_dir, encoder, tmp_path, capsys):
    root = tmp_path / "fiq"
    link(root, BENCH / "fashioniq", ["captions", "image_splits"])
    caps = {c: json.loads((BENCH / f"fashioniq/captions/cap.{c}.val.json").read_text())
            for c in ("dress", "shirt", "toptee")}
    made: set[str] = set()
    for c in caps:
        for e in caps[c][:12]:
            for n in (e["candidate"], e["target"]):
                if n not in made:
                    placeholder(root / "images" / f"{n}.png", len(made))
                    made.add(n)
    rc = main(["eval", "--benchmark", "fashioniq", "--split", "val", "--data-root", str(root), "--backbone",
               f"tiny:{backbone_dir}", "--methods", "text", "--drop-incomplete", "--caption-join", "both",
               "--index-dir", str(tmp_path / "idx"), "--out", str(tmp_path / "res.json"),
               "--save-rankings", str(tmp_path / "preds")])
    assert rc == 0 and "INCOMPLETE DATA" in capsys.readouterr().err
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["prompt"]["join"] == "both" and res["prompt"]["join_formats"] == ["{c1} and {c2}", "{c2} and {c1}"]
    preds = json.loads((tmp_path / "preds/fashioniq-val-text.predictions.json").read_text())
    kept, want = {}, {}
    for c in caps:
        gallery = [n for n in json.loads((BENCH / f"fashioniq/image_splits/split.{c}.val.json").read_text())
                   if n in made]
        kept[c] = [(i, e) for i, e in enumerate(caps[c]) if e["candidate"] in made and e["target"] in made]
        assert res["queries"][c] == len(kept[c]) >= 12 and res["gallery"][c] == len(gallery)
        assert len(preds[c]) == len(caps[c])   # aligned with the caption file; dropped entries are []
        img = gallery_features(tmp_path / f"idx/fashioniq-val-{c}", gallery)
        rows = []
        pairs = [(e["captions"][0].strip(), e["captions"][1].strip()) for _, e in kept[c]]
        t = text_features(encoder, [f"{a} and {b}" for a, b in pairs] + [f"{b} and {a}" for a, b in pairs])
        for n, (i, e) in enumerate(kept[c]):
            s = img @ (t[n] + t[len(pairs) + n])          # averaging both orders = averaging their scores
            full = [gallery[j] for j in np.argsort(-s, kind="stable")]   # reference NOT removed
            assert preds[c][i] == full[:50], (c, i)
            rows.append(full[:50])
        want[c] = rows
    got = res["results"][0]["metrics"]
    assert_same(got, naive_fashioniq({c: [e for _, e in kept[c]] for c in caps}, want))


def circo_val(root: Path, queries: list | None = None) -> tuple[list, list[int]]:
    """A CIRCO root with the val annotations (all, or ``queries``), a COCO listing of their references and
    ground truth plus 40 distractors, and a placeholder image for each; (queries, image ids)."""
    (root / "annotations").mkdir(parents=True)
    if queries is None:
        (root / "annotations/val.json").symlink_to(BENCH / "circo/annotations/val.json")
        queries = json.loads((BENCH / "circo/annotations/val.json").read_text())
    else:
        (root / "annotations/val.json").write_text(json.dumps(queries))
    needed = {q["reference_img_id"] for q in queries} | {g for q in queries for g in q["gt_img_ids"]}
    distractors = set(random.Random(0).sample([i for i in range(1, 600000) if i not in needed], 40))
    ids = sorted(needed | distractors)
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]
    listing = root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
    listing.parent.mkdir(parents=True)
    listing.write_text(json.dumps({"info": {}, "images": images}))
    for n, im in enumerate(images):
        placeholder(root / "COCO2017_unlabeled/unlabeled2017" / im["file_name"], n)
    return queries, ids


def test_circo_eval_end_to_end_and_validate(backbone_dir, encoder, tmp_path, capsys):
    root = tmp_path / "circo"
    queries, ids = circo_val(root)
    rc = main(["data", "check", "--benchmark", "circo", "--split", "val", "--data-root", str(root)])
    assert rc == 0 and "can evaluate: yes" in capsys.readouterr().out
    rc = main(["eval", "--benchmark", "circo", "--split", "val", "--data-root", str(root), "--backbone",
               f"tiny:{backbone_dir}", "--methods", "text", "--index-dir", str(tmp_path / "idx"),
               "--out", str(tmp_path / "res.json"), "--save-rankings", str(tmp_path / "preds")])
    assert rc == 0
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["queries"] == {"all": 220} and res["gallery"] == {"all": len(ids)} and res["complete"] is True
    pred_file = tmp_path / "preds/circo-val-text.predictions.json"
    preds = json.loads(pred_file.read_text())
    img = gallery_features(tmp_path / "idx/circo-val-all", [str(i) for i in ids])
    txt = text_features(encoder, [q["relative_caption"] for q in queries])
    for i, q in enumerate(queries):
        s = img @ txt[i]
        assert preds[str(q["id"])] == [ids[j] for j in np.argsort(-s, kind="stable")[:50]]
    assert_same(res["results"][0]["metrics"], naive_circo(queries, preds))
    # the saved file is a valid server file for val, and eval-predictions reproduces the numbers
    rc = main(["validate-submission", "--benchmark", "circo", "--split", "val", "--data-root", str(root),
               str(pred_file)])
    assert rc == 0 and "OK" in capsys.readouterr().out
    rc = main(["eval-predictions", "--benchmark", "circo", "--split", "val", "--data-root", str(root),
               "--predictions", str(pred_file), "--json"])
    assert rc == 0
    assert_same(json.loads(capsys.readouterr().out), res["results"][0]["metrics"])


def circo_test(root: Path) -> None:
    """A CIRCO root with the real test annotations, their references plus 60 more images as placeholders."""
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/test.json").symlink_to(BENCH / "circo/annotations/test.json")
    queries = json.loads((BENCH / "circo/annotations/test.json").read_text())
    ids = sorted({q["reference_img_id"] for q in queries} | set(range(1, 61)))
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]
    listing = root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
    listing.parent.mkdir(parents=True)
    listing.write_text(json.dumps({"images": images}))
    for n, im in enumerate(images):
        placeholder(root / "COCO2017_unlabeled/unlabeled2017" / im["file_name"], n)


def test_circo_submit_test_split(backbone_dir, tmp_path, capsys):
    root = tmp_path / "circo"
    circo_test(root)
    rc = main(["submit", "--benchmark", "circo", "--split", "val", "--data-root", str(root), "--out", str(tmp_path)])
    assert rc == 2 and "scores test, not 'val'" in capsys.readouterr().err
    out = tmp_path / "sub"
    rc = main(["submit", "--benchmark", "circo", "--split", "test", "--data-root", str(root), "--backbone",
               f"tiny:{backbone_dir}", "--method", "sum", "--out", str(out), "--index-dir", str(tmp_path / "idx")])
    assert rc == 0 and "(validated)" in capsys.readouterr().out
    sub = json.loads((out / "circo-test.predictions.json").read_text())
    assert len(sub) == 800 and all(len(v) == 50 and len(set(v)) == 50 and isinstance(v[0], int) for v in sub.values())
    cfg = json.loads((out / "run-config.json").read_text())
    assert cfg["method"] == {"name": "sum"} and cfg["prompt"] == {"template": "{caption}"}
    rc = main(["validate-submission", "--benchmark", "circo", "--split", "test", "--data-root", str(root),
               str(out / "circo-test.predictions.json")])
    assert rc == 0
