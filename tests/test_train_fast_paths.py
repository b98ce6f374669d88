"""The trainers' speed-ups change no result: each fast path against a straightforward computation.

- ``length_grouped`` (text batches cut into length groups): the same features and gradients as one
  padded batch, on both tiny text towers (mean-pooled and CLIP-style);
- LinCIR trained by ``train_method`` (length groups, frozen backbone, fused AdamW) against a plain
  loop written here from the method's definition (one padded batch, ``torch.optim.AdamW`` defaults);
- the tiny backbone trainer with its fast paths against the same trainer with them replaced by the
  plain forms (one padded text batch, the for-loop AdamW).

Tolerances are float32 rounding: the grouped matmuls sum in another order.
"""
from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cirlab.backbones import create_backbone
from cirlab.backbones.base import length_grouped
from cirlab.methods.textual_inversion import ConceptVocabulary, Phi, PhiConfig
from cirlab.train.textual_inversion import MethodTrainConfig, TrainingData, train_method


@pytest.fixture(params=["mean", "clip"])
def tower(request, tiny_config):
    from dataclasses import replace

    return create_backbone("tiny:random", config=replace(tiny_config, text_encoder=request.param, text_depth=2))


def _texts(n: int) -> list[str]:
    rng = random.Random(0)
    words = ["red", "small", "circle", "square", "at", "the", "top", "left", "and", "a", "blue", "$"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) + " $" for _ in range(n)]


def test_length_grouped_matches_one_padded_batch(tower):
    tok = tower.tokenize(_texts(200))
    lengths = tok["attention_mask"].sum(1)
    assert int(lengths.min()) < int(lengths.max()) - 5  # the groups really are cut shorter
    pseudo = torch.randn(200, tower.token_dim, requires_grad=True)
    weights = torch.randn(200, tower.embed_dim)
    plain = tower.forward_texts_pseudo(tok, pseudo)
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), [pseudo])
    calls: list[int] = []

    def forward(tk, rows):
        calls.append(tk["input_ids"].shape[1])
        return tower.forward_texts_pseudo(tk, pseudo[rows])

    grouped = length_grouped(tower, tok, forward, group_rows=32)
    (g_grouped,) = torch.autograd.grad((grouped * weights).sum(), [pseudo])
    assert len(calls) == 6 and calls == sorted(calls) and max(calls) == tok["input_ids"].shape[1] > calls[0]
    assert torch.allclose(grouped, plain, atol=1e-5)
    assert torch.allclose(g_grouped, g_plain, atol=1e-5, rtol=1e-4)


def test_lincir_fast_path_trains_the_weights_a_plain_loop_trains(tiny_backbone, small_world):
    data = TrainingData(small_world / "train")
    cfg = MethodTrainConfig(method="lincir", steps=4, batch_size=140, lr=1e-3, hidden=32, layers=2, dropout=0.1,
                            seed=3, log_every=1)
    ck = train_method(tiny_backbone, data, cfg, progress=False)
    assert all(p.requires_grad for p in tiny_backbone.parameters())  # the frozen backbone is restored

    # the same training written out plainly: LinCIR's loss on one padded batch per step
    bb = tiny_backbone
    vocab = ConceptVocabulary.for_backbone(bb)
    pairs = [(c, m) for c in data.caption_list() if (m := vocab.mask_keywords(c, bb.placeholder))]
    captions, masked = [p[0] for p in pairs], [p[1] for p in pairs]
    assert len(captions) > 2 * cfg.batch_size
    t_all = bb.encode_texts(captions)
    torch.manual_seed(cfg.seed)
    phi = Phi(PhiConfig(bb.embed_dim, bb.token_dim, cfg.hidden, cfg.layers, "gelu", cfg.dropout))
    opt = torch.optim.AdamW(phi.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    phi.train()
    losses = []
    for _ in range(cfg.steps):
        idx = torch.randperm(len(captions), generator=gen)[:cfg.batch_size]
        t = t_all[idx]
        u = torch.rand(len(t), 1, generator=gen)
        g = torch.randn(t.shape, generator=gen) / t.shape[1] ** 0.5
        v = phi(F.normalize(t + cfg.noise * u * g, dim=-1))
        out = bb.forward_texts_pseudo(bb.tokenize([masked[i] for i in idx.tolist()]), v)
        loss = ((out - t) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert [e["loss"] for e in ck.training["log"]] == pytest.approx([round(x, 5) for x in losses], abs=2e-5)
    trained = ck.phi.state_dict()
    for k, w in phi.state_dict().items():
        assert torch.allclose(trained[k], w, atol=1e-5), k
    assert not torch.allclose(trained["net.0.weight"], Phi(phi.cfg).state_dict()["net.0.weight"])


def test_backbone_trainer_fast_paths_match_the_plain_ones(small_world, tmp_path, monkeypatch):
    from cirlab.train import backbone as trainer
    from cirlab.train.backbone import BackboneTrainConfig, train_backbone

    def run(out):
        cfg = BackboneTrainConfig(data=str(small_world / "train"), out=str(out), max_steps=3, batch_size=128,
                                  warmup_steps=1, width=32, depth=1, text_depth=2, embed_dim=16, image_size=32,
                                  text_encoder="clip", threads=1)
        summary = train_backbone(cfg, progress=False)
        return load_file(str(out / "model.safetensors")), summary

    fast, s_fast = run(tmp_path / "fast")
    plain_adamw = torch.optim.AdamW

    def adamw(*args, fused=None, **kwargs):  # the for-loop implementation
        return plain_adamw(*args, foreach=False, **kwargs)

    monkeypatch.setattr(trainer, "length_grouped", lambda bb, tokens, forward: forward(tokens, None))
    monkeypatch.setattr(trainer.torch.optim, "AdamW", adamw)
    plain, s_plain = run(tmp_path / "plain")
    assert [e["loss"] for e in s_fast["log"]] == pytest.approx([e["loss"] for e in s_plain["log"]], abs=2e-4)
    assert fast.keys() == plain.keys()
    for k in fast:  # saved as float16: equal to its rounding
        assert torch.allclose(fast[k].float(), plain[k].float(), atol=2e-3, rtol=2e-3), k
    init = json.loads((tmp_path / "fast" / "config.json").read_text())
    assert init["training"]["steps"] == 3


def test_text_features_are_encoded_once_across_runs(tiny_backbone, tmp_path, monkeypatch):
    from cirlab.train.features import cached_text_features

    texts = _texts(40)
    want = tiny_backbone.encode_texts(texts, normalize=False)
    first = cached_text_features(tiny_backbone, texts, normalize=False, cache_dir=tmp_path)
    assert torch.equal(first, want) and len(list(tmp_path.glob("*.safetensors"))) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(tiny_backbone, "encode_texts", no_encoding)
    again = cached_text_features(tiny_backbone, texts, cache_dir=tmp_path)
    assert torch.allclose(again, F.normalize(want, dim=-1), atol=1e-6)
    with pytest.raises(AssertionError, match="encoded again"):  # other texts, other weights: encoded
        cached_text_features(tiny_backbone, texts[:-1], cache_dir=tmp_path)
    with torch.no_grad():
        tiny_backbone.text.proj.weight.mul_(2)
    with pytest.raises(AssertionError, match="encoded again"):
        cached_text_features(tiny_backbone, texts, cache_dir=tmp_path)
    monkeypatch.undo()
    (path,) = tmp_path.glob("*.safetensors")  # a damaged file is encoded again and replaced
    with torch.no_grad():
        tiny_backbone.text.proj.weight.div_(2)
    path.write_bytes(b"not a safetensors file")
    assert torch.equal(cached_text_features(tiny_backbone, texts, normalize=False, cache_dir=tmp_path), want)
    assert torch.equal(load_file(str(path))["raw"], want)


def test_training_images_are_encoded_once_across_runs(tiny_backbone, small_world, monkeypatch):
    want = tiny_backbone.encode_images(TrainingData(small_world / "train", 50).paths, normalize=False)
    first = TrainingData(small_world / "train", 50).image_features(tiny_backbone, progress=False, normalize=False)
    assert torch.allclose(first, want, atol=1e-6)

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(tiny_backbone, "forward_images", no_encoding)
    again = TrainingData(small_world / "train", 50).image_features(tiny_backbone, progress=False)
    assert torch.allclose(again, F.normalize(want, dim=-1), atol=1e-6)


@pytest.mark.parametrize("texts", ["varied", "prompt", "same"])
def test_clip_tower_skips_work_whose_result_it_never_reads(tiny_config, texts):
    """The CLIP tower computes its last layer at the end-of-text token only, and positions every row shares
    (the tokens before the pseudo word of a prompt) once: the same features and gradients as every layer
    at every position of every row."""
    from dataclasses import replace

    from cirlab.backbones.tiny import shared_prefix

    bb = create_backbone("tiny:random", config=replace(tiny_config, text_encoder="clip", text_depth=3))
    batch = {"varied": _texts(40), "prompt": ["a red circle at the $ and the top"] * 40,
             "same": ["a red circle at the top"] * 40}[texts]
    tok = bb.tokenize(batch)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    where = ids == bb.tokenizer.placeholder_id
    assert shared_prefix(ids, where) == {"varied": 1, "prompt": 6, "same": ids.shape[1]}[texts]
    pseudo = torch.randn(40, bb.token_dim, requires_grad=True)
    weights = torch.randn(40, bb.embed_dim)

    def reference(replace=True):  # every layer at every position of every row (causal mask), then the end-of-text row
        x = bb.text.embed(ids)
        if replace:
            x = torch.where(where.unsqueeze(-1), pseudo.unsqueeze(1).expand(-1, ids.shape[1], -1), x)
        causal = torch.triu(torch.full((ids.shape[1],) * 2, float("-inf")), diagonal=1)
        h = bb.text.ln(bb.text.blocks(x + bb.text.pos[:, : ids.shape[1]], mask=causal))
        return bb.text.proj(h[torch.arange(len(ids)), mask.sum(1) - 1])

    params = [pseudo] + list(bb.text.parameters())
    fast = bb.forward_texts_pseudo(tok, pseudo, normalize=False)
    ref = reference()
    assert torch.allclose(fast, ref, atol=1e-5)
    for a, b in zip(torch.autograd.grad((fast * weights).sum(), params, allow_unused=True),
                    torch.autograd.grad((ref * weights).sum(), params, allow_unused=True)):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    bb.eval()
    with torch.no_grad():  # the inference path (texts without pseudo words)
        assert torch.allclose(bb.forward_texts(tok, normalize=False), reference(replace=False), atol=1e-5)


@pytest.mark.parametrize("encoder", ["mean", "clip"])
def test_encode_texts_in_length_order_returns_each_texts_own_feature(tiny_config, encoder):
    from dataclasses import replace

    bb = create_backbone("tiny:random", config=replace(tiny_config, text_encoder=encoder))
    texts = [t.replace("$", "red") for t in _texts(70)]
    batched = bb.encode_texts(texts, batch_size=16)
    with torch.no_grad():
        one_by_one = torch.cat([bb.forward_texts(bb.tokenize([t])) for t in texts])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
