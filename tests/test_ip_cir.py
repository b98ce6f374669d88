"""IP-CIR: captioners, rewriters (world analog, LLM through a local fake server), robust proxy, balanced similarity."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from cirlab.data import load_dataset
from cirlab.errors import CirlabError
from cirlab.methods import QueryBatch, create_method
from cirlab.methods.generators import PROXY_GENERATORS
from cirlab.methods.ip_cir import IPCIR, IPCIRConfig
from cirlab.methods.proxies import (
    CAPTIONERS,
    NearestCaptionCaptioner,
    WorldRuleRewriter,
    create_captioner,
    create_rewriter,
)
from cirlab.methods.proxies.rewriters import apply_clause
from cirlab.synth.world import REAL, parse_description
from cirlab.world.scene import Scene, render


def _scene(meta: dict) -> Scene:
    return Scene.from_list(meta["objects"])


def _batch(ds, n: int, backbone) -> tuple[list, QueryBatch]:
    trips = [t for t in ds.triplets if t.targets][:n]
    g = ds.gallery
    paths = [g.paths[g.ids.index(t.reference)] for t in trips]
    return trips, QueryBatch([t.caption for t in trips], backbone.encode_images(paths), paths,
                             [t.reference for t in trips])


def test_world_rewriter_applies_every_edit_of_the_world(small_world):
    ds = load_dataset(small_world / "test")
    meta = dict(zip(ds.gallery.ids, ds.gallery.meta))
    caps = dict(zip(ds.gallery.ids, ds.gallery.captions))
    rw = WorldRuleRewriter()
    kinds = set()
    human_hits = human = 0
    for t in ds.triplets:
        # the rewriter parses the edit grammar: the procedural wording of every query (an oracle on it)
        procedural = t.meta["texts"]["procedural"]
        out = rw.rewrite_one(caps[t.reference], procedural)
        assert parse_description(out) in {_scene(meta[x]) for x in t.targets}, (caps[t.reference], procedural, out)
        kinds.add(t.meta["kind"])
        for register in ("describing", "casual"):
            human += 1
            try:
                human_hits += parse_description(WorldRuleRewriter().rewrite_one(caps[t.reference], t.meta["texts"][
                    register])) in {_scene(meta[x]) for x in t.targets}
            except ValueError:
                pass
    assert kinds == {"add", "remove", "colour", "shape", "size", "move", "two edits"}
    assert rw.stats.failed_clauses == 0
    assert human_hits < 0.5 * human  # human wordings are outside its grammar


def test_world_rewriter_hand_cases():
    s = parse_description("a small red circle at the top left and a large blue star in the center")
    assert apply_clause(s, "make the red circle large") == parse_description(
        "a large red circle at the top left and a large blue star in the center")
    # "put the ... at the X" is a move; the object may be named with its place
    assert apply_clause(s, "put the blue star at the top left at the bottom") is None   # no star at the top left
    assert apply_clause(s, "put the blue star at the bottom") == parse_description(
        "a small red circle at the top left and a large blue star at the bottom")
    assert apply_clause(s, "remove the green square") is None
    rw = WorldRuleRewriter()
    assert rw.rewrite_one("not a world description", "remove the red circle") == "not a world description"
    assert rw.stats.unparsed_descriptions == 1


def test_world_captioner_is_the_nearest_bank_caption(small_world, tiny_backbone):
    ds = load_dataset(small_world / "train")
    bank = list(dict.fromkeys(c for c in ds.gallery.captions if c))
    cap = NearestCaptionCaptioner(tiny_backbone, small_world / "train")
    feats = tiny_backbone.encode_images(list(ds.gallery.paths[:12]))
    got = cap.caption(QueryBatch(["x"] * 12, feats))
    text = tiny_backbone.encode_texts(bank)
    want = [bank[int(torch.argmax(text @ f))] for f in feats]
    assert got == want
    # a reference feature equal to a caption's text feature gets that caption back
    assert cap.caption(QueryBatch(["x"], text[5:6])) == [bank[5]]


def test_world_render_generator_draws_the_rewritten_description(small_world, tiny_backbone):
    ds = load_dataset(small_world / "test")
    gen = PROXY_GENERATORS.get("world-render")(f"{small_world / 'train'}", backbone=tiny_backbone)
    assert gen.kind == "pixels" and "ANALOG" in PROXY_GENERATORS.describe()["world-render"]
    trips, batch = _batch(ds, 6, tiny_backbone)
    imgs = gen.generate(batch, seed=1)
    refs = NearestCaptionCaptioner(tiny_backbone, small_world / "train").caption(batch)
    for im, ref, t in zip(imgs, refs, trips):
        target = WorldRuleRewriter().rewrite_one(ref, t.caption)
        assert im.size == (64, 64)
        # same scene in the world's own style, noise and jitter aside: same colours at the objects' centres
        clean = render(parse_description(target), 64, REAL.__class__(**{**REAL.__dict__, "noise": 0.0, "jitter": 0.0}))
        for o in parse_description(target).objects:
            x, y = (o.cell % 3) * 64 // 3 + 64 // 6, (o.cell // 3) * 64 // 3 + 64 // 6
            a, b = im.getpixel((x, y)), clean.getpixel((x, y))
            assert sum(abs(u - v) for u, v in zip(a, b)) < 120, (target, o)


def _ip_cir(small_world, backbone, **kw) -> IPCIR:
    cfg = IPCIRConfig(generator=f"world-render:{small_world / 'train'}", captioner=f"world:{small_world / 'train'}",
                      rewriter=kw.pop("rewriter", "world"), **kw)   # the oracle configuration: world grammar
    return IPCIR(backbone, cfg)


def test_balanced_similarity_equals_the_product_formula(small_world, tiny_backbone):
    ds = load_dataset(small_world / "test")
    a, b, c, lam = 0.8, 0.3, 0.6, 0.4
    m = _ip_cir(small_world, tiny_backbone, proxy_weight=a, reference_weight=b, perturbation_weight=c, lam=lam)
    trips, batch = _batch(ds, 5, tiny_backbone)
    q = m.compose(batch)
    gallery = tiny_backbone.encode_images(list(ds.gallery.paths[:40]))
    cand = gallery[None].expand(len(trips), -1, -1)
    ids = [list(ds.gallery.ids[:40])] * len(trips)
    got = m.rescore(batch, q, ids, q @ gallery.T, cand)

    # independently: captions, rewrite, render, encode
    refs = NearestCaptionCaptioner(tiny_backbone, small_world / "train").caption(batch)
    tgts = [WorldRuleRewriter().rewrite_one(r, t.caption) for r, t in zip(refs, trips)]
    t_feat = tiny_backbone.encode_texts(tgts)
    proxy_imgs = [m.generator.renderer.render(parse_description(d), f"{n}:{d}") for n, d in enumerate(tgts)]
    f_p = tiny_backbone.encode_images(proxy_imgs)
    f_ref = F.normalize(batch.reference_features, dim=-1)
    p = F.normalize(a * f_p + b * f_ref + c * (t_feat - tiny_backbone.encode_texts(refs)), dim=-1)
    s_t, s_p = t_feat @ gallery.T, p @ gallery.T
    want = (1 - lam) * s_t + lam * (s_t * s_p)
    assert torch.allclose(q, t_feat, atol=1e-5)
    assert torch.allclose(got, want, atol=1e-5)
    # lam = 0 is the text side alone
    m0 = _ip_cir(small_world, tiny_backbone, lam=0.0)
    assert torch.allclose(m0.balanced_scores(batch, q, gallery), s_t, atol=1e-5)


def test_retriever_rescore_ranks_by_the_balanced_similarity(small_world, tiny_backbone, tmp_path):
    from cirlab.eval.evaluate import evaluate
    from cirlab.index import build_index
    from cirlab.retrieval import Retriever

    ds = load_dataset(small_world / "test")
    cfg_path = IPCIRConfig(generator=f"world-render:{small_world / 'train'}",
                           captioner=f"world:{small_world / 'train'}", rewriter="world", lam=0.7,
                           rescore_depth=30).save(tmp_path)
    m = create_method(f"ip-cir:{cfg_path}", tiny_backbone)
    index = build_index(tiny_backbone, ds.gallery, tmp_path / "index", progress=False)
    r = Retriever(tiny_backbone, index, m, dict(zip(ds.gallery.ids, map(str, ds.gallery.paths))))
    batch = r.make_batch([t.reference for t in ds.triplets[:4]], [t.caption for t in ds.triplets[:4]])
    scores, _ = r.search_batch(batch, 10, None, rescore_depth=30)
    q = m.text_query(batch)
    first = torch.topk(q @ index.vectors(list(ds.gallery.ids)).T, 30).indices
    for row in range(4):
        feats = index.vectors([ds.gallery.ids[i] for i in first[row]])
        want = m.balanced_scores(QueryBatch(batch.texts[row:row + 1], batch.reference_features[row:row + 1],
                                            extra={"ip_cir_proxy": batch.extra["ip_cir_proxy"][row:row + 1]}),
                                 q[row:row + 1], feats)[0]
        assert torch.allclose(torch.as_tensor(scores[row]), torch.sort(want, descending=True).values[:10], atol=1e-5)
    res = evaluate(r, ds, rescore_depth=m.rescore_depth, progress=False)
    assert set(res.metrics) >= {"recall@1", "recall@10", "recall@50", "map@10"}
    assert res.config["method"]["captioner_config"]["analog"] is True


class _FakeLLM(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []
    malformed_first = True

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        user = body["messages"][-1]["content"]
        ref = user.split("\n")[0].removeprefix("Reference: ")
        mod = user.split("\n")[1].removeprefix("Modification: ")
        if type(self).malformed_first:
            type(self).malformed_first = False
            content = "{not json"
        else:
            content = json.dumps({"target": f"{ref} after {mod}"})
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_llm_rewriter_against_a_local_server():
    server = HTTPServer(("127.0.0.1", 0), _FakeLLM)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        rw = create_rewriter(f"llm:http://127.0.0.1:{server.server_port}/v1,model=tiny")
        out = rw.rewrite(["a cat on a sofa", "a red car"], ["make it sleep", "paint it blue"])
        assert out == ["a cat on a sofa after make it sleep", "a red car after paint it blue"]
        assert rw.failures == 1                                   # the malformed first answer was retried
        assert len(_FakeLLM.requests) == 3 and all(r["model"] == "tiny" for r in _FakeLLM.requests)
        assert _FakeLLM.requests[-1]["response_format"] == {"type": "json_object"}
    finally:
        server.shutdown()
    with pytest.raises(CirlabError, match="option"):
        create_rewriter("llm:http://127.0.0.1:1/v1,colour=blue")
    assert rw.parse('```json\n{"target": "x y"}\n```') == "x y"
    with pytest.raises(ValueError):
        rw.parse('{"target": ""}')


def test_hf_captioner_on_a_tiny_random_blip(tmp_path):
    from PIL import Image
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "blue", "star", "at", "the", "top"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                         tokenizer=BertTokenizer(str(tmp_path / "vocab.txt")))
    text = {"vocab_size": len(words), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 32, "encoder_hidden_size": 16, "pad_token_id": 0,
            "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    cfg = BlipConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(cfg).eval()
    model.save_pretrained(tmp_path / "blip")
    proc.save_pretrained(tmp_path / "blip")
    ims = [Image.new("RGB", (40, 40), (200, 10, 10)), Image.new("RGB", (48, 40), (10, 10, 200))]
    cap = create_captioner(f"hf:{tmp_path / 'blip'}", _NoBackbone())
    got = cap.caption(QueryBatch(["x", "y"], torch.zeros(2, 4), ims))
    with torch.no_grad():
        ids = model.generate(**proc(images=ims, return_tensors="pt"), max_new_tokens=30, do_sample=False)
    assert got == [s.strip() for s in proc.batch_decode(ids, skip_special_tokens=True)]
    assert all(isinstance(s, str) and s for s in got)
    with pytest.raises(CirlabError, match="pixels"):
        cap.caption(QueryBatch(["x"], torch.zeros(1, 4)))
    with pytest.raises(CirlabError, match="cannot load"):
        create_captioner(f"hf:{tmp_path / 'missing'}", _NoBackbone())


class _NoBackbone:
    device = torch.device("cpu")


def test_ip_cir_config_errors(tmp_path):
    with pytest.raises(CirlabError, match="lam"):
        IPCIRConfig(generator="x", captioner="y", lam=1.5)
    (tmp_path / "ip-cir.json").write_text(json.dumps({"generator": "x", "captioner": "y", "weight": 1}))
    with pytest.raises(CirlabError, match="unknown field"):
        IPCIRConfig.load(tmp_path)
    with pytest.raises(CirlabError, match="no such config"):
        IPCIRConfig.load(tmp_path / "nope.json")


def test_zero_shot_trainer_writes_a_working_spec(small_world, tiny_backbone, tmp_path):
    import cirlab.train.ip_cir  # noqa: F401  (registers the trainer)
    from cirlab.eval.evaluate import evaluate_methods
    from cirlab.train.zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext

    ctx = ZeroShotContext(tiny_backbone, small_world, tmp_path / "ip-cir", quick=True, progress=False)
    spec = ZEROSHOT_TRAINERS.get("ip-cir")(ctx)
    assert spec.startswith("ip-cir:") and Path(spec.split(":", 1)[1]).is_file()
    cfg = json.loads(Path(spec.split(":", 1)[1]).read_text())
    assert cfg["captioner"].startswith("world:") and (tmp_path / "ip-cir" / "caption-bank" / "caption-bank.json").is_file()
    test = load_dataset(small_world / "test")
    [res] = evaluate_methods(test, tiny_backbone, [spec], tmp_path / "index", progress=False)
    # the reported recall@10 is the share of queries with a target in their (re-scored) top 10
    trips = [t for t in test.triplets if t.targets]
    hits = sum(bool(set(res.rankings[t.id][:10]) & set(t.targets)) for t in trips)
    assert res.metrics["recall@10"] == pytest.approx(100.0 * hits / len(trips), abs=0.01)
    assert all(t.reference not in res.rankings[t.id] for t in trips)  # the reference is never an answer
    # the default configuration is the non-oracle one: lexical rewriter, t2i generator
    from cirlab.methods.base import oracle_parts

    assert cfg["rewriter"] == "lexical" and cfg["generator"].startswith("t2i:") and oracle_parts(res.config) == []


def test_oracle_captioner_reads_the_gallery_and_names_missing_references(small_world, tiny_backbone):
    ds = load_dataset(small_world / "test")
    cap = create_captioner(f"oracle:{small_world / 'test'}", tiny_backbone)
    ids = list(ds.gallery.ids[:3])
    got = cap.caption(QueryBatch(["x"] * 3, torch.zeros(3, 4), reference_ids=ids))
    assert got == list(ds.gallery.captions[:3])
    with pytest.raises(CirlabError, match="nope"):
        cap.caption(QueryBatch(["x"], torch.zeros(1, 4), reference_ids=["nope"]))
    assert "NOT A METHOD" in CAPTIONERS.describe()["oracle"]
