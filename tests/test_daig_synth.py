"""Synthetic triplets: scripters (template, LLM over a loopback server), the world generator, its style fit,
and the DAIG experiment end to end on a miniature world."""
from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from cirlab.errors import CirlabError, DatasetError
from cirlab.synth import (REAL, UNADAPTED, LLMConfig, LLMError, LLMScripter, TemplateScripter, TemplateSet,
                          TextTriplet, WorldGenerator, create_generator, fit_style, frechet_diagonal,
                          parse_description, read_text_triplets, write_text_triplets)
from cirlab.world import Style, caption, random_scene, render


def test_parse_description_inverts_world_captions_and_rejects_free_text():
    rng = random.Random(0)
    for _ in range(200):
        s = random_scene(rng)
        assert parse_description(caption(s)) == s
        assert parse_description(caption(s, rng)) == s  # the random phrasings too
    for bad in ("a cat on a mat", "a small red circle at the top left and a dog",
                "a small red circle at the top and a large blue star at the top"):
        with pytest.raises(ValueError):
            parse_description(bad)


def test_template_scripter_writes_validated_distinct_triplets(tmp_path):
    ts = TemplateScripter(TemplateSet(kinds={"colour": 1.0, "add": 1.0}), seed=4).script(50)
    assert len(ts) == 50 and len({t.key for t in ts}) == 50
    assert {t.meta["kind"] for t in ts} == {"colour", "add"}
    gen = WorldGenerator(REAL)
    assert all(gen.check(t) is None for t in ts)
    assert ts == TemplateScripter(TemplateSet(kinds={"colour": 1.0, "add": 1.0}), seed=4).script(50)
    p = write_text_triplets(tmp_path / "t.jsonl", ts)
    assert read_text_triplets(p) == ts
    p.write_text(p.read_text() + '{"reference": "a", "modification": "make it red"}\n')
    with pytest.raises(DatasetError, match=r"t.jsonl:51"):
        read_text_triplets(p)
    with pytest.raises(CirlabError, match="unknown edit kind"):
        TemplateSet(kinds={"recolour": 1.0})


class _ChatServer:
    """A loopback server speaking the OpenAI chat-completions protocol with scripted answers."""

    def __init__(self, answers: list[str]) -> None:
        self.answers, self.requests = list(answers), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                content = outer.answers.pop(0) if outer.answers else "{}"
                data = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _answer(*triplets: tuple[str, str, str]) -> str:
    return json.dumps({"triplets": [{"reference": r, "modification": m, "target": t} for r, m, t in triplets]})


A = ("a small red circle at the top left", "make the red circle blue", "a small blue circle at the top left")
B = ("a large green square in the center", "add a small red star at the top",
     "a small red star at the top and a large green square in the center")
C = ("a small gray star at the right", "remove the gray star and add a large cyan circle at the left",
     "a large cyan circle at the left")


def test_llm_scripter_rejects_malformed_json_retries_dedups_and_uses_few_shot():
    shots = [TextTriplet(*A)]
    answers = ['{"triplets": [{"reference": "a small', "```json\n" + json.dumps({"triplets": [{"reference": "x y z"}]})
               + "\n```", _answer(A, B, ("a cat", "make it a dog", "a dog")), "```json\n" + _answer(B, C) + "\n```"]
    gen = WorldGenerator(REAL)
    with _ChatServer(answers) as srv:
        cfg = LLMConfig(srv.url, model="tiny-llm", api_key="k", backoff=0.0, max_retries=3, per_request=4)
        sc = LLMScripter(cfg, shots, domain_check=gen.check)
        out = sc.script(2)
    assert [t.key for t in out] == [TextTriplet(*B).key, TextTriplet(*C).key]
    st = sc.stats
    assert (st.requests, st.malformed_json, st.schema_invalid) == (4, 1, 1)
    assert st.duplicates == 2 and st.rejected_domain == 1  # A is a few-shot example, B came twice; the cat is not a world scene
    path, headers, body = srv.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k"
    assert body["model"] == "tiny-llm" and body["response_format"] == {"type": "json_object"}
    # the few-shot example from the target domain is an assistant turn before the request
    assert json.loads(body["messages"][2]["content"])["triplets"][0]["reference"] == A[0]
    assert body["messages"][-1]["role"] == "user" and "2 new" in body["messages"][-1]["content"]


def test_llm_scripter_gives_up_after_max_retries():
    with _ChatServer(["not json"] * 10) as srv:
        sc = LLMScripter(LLMConfig(srv.url, backoff=0.0, max_retries=2))
        with pytest.raises(LLMError, match="3 failed requests in a row.*malformed JSON"):
            sc.script(3)
        assert len(srv.requests) == 3
    with pytest.raises(CirlabError, match="base_url"):
        LLMScripter(LLMConfig("127.0.0.1:8000"))


def test_world_generator_writes_a_dataset_and_the_style_fit_recovers_the_real_style(tmp_path):
    from cirlab.data import load_dataset

    texts = TemplateScripter(seed=1).script(20)
    root = create_generator("world:unadapted", seed=2).generate(texts + [TextTriplet("a cat", "make it big", "a big cat")],
                                                                 tmp_path / "syn", progress=False)
    ds = load_dataset(root)
    assert len(ds.triplets) == 20 and json.loads((root / "dataset.json").read_text())["skipped"] == 1
    t = ds.triplets[0]
    img = np.asarray(__import__("PIL.Image").Image.open(ds.gallery.path(t.targets[0])).convert("RGB"))
    scene = parse_description(texts[0].target)
    assert img.shape == (64, 64, 3) and t.caption == texts[0].modification
    assert ds.gallery.captions[ds.gallery.position(t.targets[0])] == caption(scene)
    # fit: 'real' images in a known style, fitted from the unadapted generator's style
    true = Style(background=(180, 190, 200), colour_shift=(-16, 8, 24), jitter=0.0, scale=1.2, noise=6.0, blur=0.5)
    rng = random.Random(7)
    scenes = [random_scene(rng) for _ in range(24)]
    imgs = [render(s, 64, true, random.Random(n)) for n, s in enumerate(scenes)]
    fit = fit_style(imgs, [caption(s) for s in scenes], UNADAPTED, sweeps=1)
    f = fit.style
    assert all(abs(a - b) <= 2 for a, b in zip(f.background, true.background))
    assert all(abs(a - b) <= 8 for a, b in zip(f.colour_shift, true.colour_shift))
    assert abs(f.scale - 1.2) < 0.051 and abs(f.blur - 0.5) <= 0.25 and abs(f.noise - 6.0) < 1.0
    assert fit.report["histogram_distance_after"] < 0.25 * fit.report["histogram_distance_before"]
    a, b = torch.randn(200, 4), torch.randn(200, 4) + 1.0
    assert frechet_diagonal(a, a) == 0.0 and frechet_diagonal(a, b) == pytest.approx(4.0, rel=0.3)


def test_daig_experiment_runs_on_a_miniature_world(tiny_backbone, tmp_path):
    from cirlab.experiments.daig import DaigConfig, markdown, run_daig
    from cirlab.train.supervised import StageConfig

    cfg = DaigConfig(world_queries=16, seeds=[0, 1], shots=8, fractions=[1.0], synthetic=24,
                     combiner={"projection": 16, "hidden": 16, "dropout": 0.0},
                     pretrain=StageConfig(epochs=1, batch_size=8), finetune=StageConfig(epochs=2, batch_size=8),
                     full_finetune=StageConfig(epochs=1, batch_size=8), fit_images=12)
    res = run_daig(cfg, tmp_path / "daig", tiny_backbone, command="cirlab experiment daig --out X", progress=False)
    rows = {s["setting"]: s for s in res["summary"]}
    assert rows["8-shot Combiner"]["seeds"] == 2 and rows["image only"]["seeds"] == 1
    assert any(k.startswith("100 % real (32 triplets)") for k in rows)
    # the fitted generator draws closer to the real images than the unadapted one, but the world's camera
    # (texture, shading, tilt, occluders, clutter) is outside its style: the distance stays above zero
    # (features of a random 16-d backbone are too coarse to show the difference; the pixels do)
    for seed in ("seed0", "seed1"):
        fit = res["styles"][seed]
        assert 0.05 < fit["histogram_distance_after"] < fit["histogram_distance_before"]
    md = markdown(res)
    assert "| + FRA (full DAIG) | 2 |" in md and "±" in md and "cirlab experiment daig --out X" in md
    # every run is a loadable combiner checkpoint
    assert (tmp_path / "daig" / "runs" / "seed1" / "fewshot-daig" / "config.json").is_file()
