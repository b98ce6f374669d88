"""Re-scoring runs on the standard benchmarks: ``cirlab eval --benchmark`` ranks with the method's
``rescore`` at its own depth (placeholder images paired with the real CIRCO val annotations)."""
from __future__ import annotations

import json

import pytest
import torch

from cirlab.cli import main
from cirlab.methods.ip_cir import IPCIRConfig
from test_bench_e2e import backbone_dir, circo_test, circo_val, encoder, gallery_features  # noqa: F401  (fixtures)
from test_bench_protocols import BENCH

pytestmark = pytest.mark.skipif(not BENCH.is_dir(), reason=f"real benchmark annotations not found at {BENCH}")


def test_eval_benchmark_runs_ip_cir_rescoring(small_world, backbone_dir, encoder, tmp_path, capsys):  # noqa: F811
    from cirlab.methods.proxies import NearestCaptionCaptioner, WorldRuleRewriter

    root = tmp_path / "circo"
    queries, ids = circo_val(root, json.loads((BENCH / "circo/annotations/val.json").read_text())[:60])
    world = small_world / "train"
    oracle = {"generator": f"world-render:{world}", "captioner": f"world:{world}", "rewriter": "world"}
    full = IPCIRConfig(**oracle, lam=0.6).save(tmp_path / "a")
    text = IPCIRConfig(**oracle, lam=0.0).save(tmp_path / "b")
    rc = main(["eval", "--benchmark", "circo", "--split", "val", "--data-root", str(root), "--backbone",
               f"tiny:{backbone_dir}", "--methods", f"ip-cir:{full},ip-cir:{text}", "--index-dir",
               str(tmp_path / "idx"), "--save-rankings", str(tmp_path / "preds"), "--out", str(tmp_path / "r.json")])
    assert rc == 0, capsys.readouterr().err
    preds = {}
    for name in ("a", "b"):
        f = next((tmp_path / "preds").glob(f"circo-val-ip-cir-*{name}-ip-cir.json.predictions.json"))
        preds[name] = json.loads(f.read_text())
    # lam = 0 is the text side alone: T(rewritten caption) against the stored gallery features
    gallery = [str(i) for i in ids]
    img = torch.from_numpy(gallery_features(tmp_path / "idx/circo-val-all", gallery)).float()
    row = {n: i for i, n in enumerate(gallery)}
    refs = img[[row[str(q["reference_img_id"])] for q in queries]]
    from cirlab.methods import QueryBatch

    caps = NearestCaptionCaptioner(encoder, world).caption(QueryBatch([q["relative_caption"] for q in queries], refs))
    tgts = [WorldRuleRewriter().rewrite_one(c, q["relative_caption"]) for c, q in zip(caps, queries)]
    s_t = encoder.encode_texts(tgts) @ img.T
    want = {str(q["id"]): [int(gallery[j]) for j in torch.argsort(-s_t[n], stable=True)[:50].tolist()]
            for n, q in enumerate(queries)}
    assert preds["b"] == want
    # the balanced similarity re-ranked the same candidates: eval --benchmark ran the re-scoring
    assert preds["a"] != preds["b"]
    assert sum(a[:10] != b[:10] for a, b in zip(preds["a"].values(), preds["b"].values())) > 10
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["results"][0]["config"]["lam"] == 0.6


def test_submit_runs_the_rescoring_too(small_world, backbone_dir, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "circo"
    circo_test(root)
    world = small_world / "train"
    subs = {}
    for name, lam in (("a", 0.6), ("b", 0.0)):
        cfg = IPCIRConfig(generator=f"world-render:{world}", captioner=f"world:{world}", rewriter="world",
                          lam=lam).save(tmp_path / name)
        assert main(["submit", "--benchmark", "circo", "--split", "test", "--data-root", str(root), "--backbone",
                     f"tiny:{backbone_dir}", "--method", f"ip-cir:{cfg}", "--out", str(tmp_path / f"sub-{name}"),
                     "--index-dir", str(tmp_path / "idx")]) == 0
        subs[name] = json.loads((tmp_path / f"sub-{name}/circo-test.predictions.json").read_text())
    assert "(validated)" in capsys.readouterr().out
    assert len(subs["a"]) == len(subs["b"]) == 800
    # the balanced similarity re-ranked the text side's candidates: submit ran the re-scoring
    assert sum(a != b for a, b in zip(subs["a"].values(), subs["b"].values())) > 100
