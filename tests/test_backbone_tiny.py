"""The tiny backbone: protocol, save/load round trip, pseudo-token injection, training."""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from cirlab.backbones import create_backbone, list_backbones
from cirlab.backbones.tiny import WordTokenizer
from cirlab.data import read_gallery
from cirlab.errors import CirlabError


def _images(n=3):
    return [Image.new("RGB", (40, 40), (40 * i, 200 - 30 * i, 90)) for i in range(n)]


def test_encode_shapes_and_normalisation(tiny_backbone):
    img = tiny_backbone.encode_images(_images())
    txt = tiny_backbone.encode_texts(["a red circle", "a small blue square at the top left"])
    assert img.shape == (3, 16) and txt.shape == (2, 16)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(2))
    # batch-size invariance
    torch.testing.assert_close(tiny_backbone.encode_images(_images(), batch_size=1), img, atol=1e-5, rtol=1e-5)
    tokens = tiny_backbone.forward_image_tokens(tiny_backbone.preprocess_batch(_images(2)))
    assert tokens.shape == (2, (32 // 8) ** 2, 32)


def test_save_load_round_trip(tiny_backbone, tmp_path):
    tiny_backbone.save(tmp_path / "m")
    again = create_backbone(f"tiny:{tmp_path / 'm'}")
    torch.testing.assert_close(again.encode_images(_images()), tiny_backbone.encode_images(_images()))
    torch.testing.assert_close(again.encode_texts(["a red circle"]), tiny_backbone.encode_texts(["a red circle"]))
    assert again.fingerprint() == tiny_backbone.fingerprint()
    with torch.no_grad():
        again.visual.proj.weight[0, 0] += 1
    assert again.fingerprint() != tiny_backbone.fingerprint()
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["kind"] == "tiny" and cfg["embed_dim"] == 16


def test_pseudo_token_changes_feature_and_passes_gradients(tiny_backbone):
    tok = tiny_backbone.tokenize(["a $ at the top", "a red circle"])
    pseudo = torch.randn(2, tiny_backbone.token_dim, requires_grad=True)
    out = tiny_backbone.forward_texts_pseudo(tok, pseudo)
    plain = tiny_backbone.forward_texts(tok)
    assert not torch.allclose(out[0], plain[0])  # has a placeholder: changed
    torch.testing.assert_close(out[1], plain[1])  # no placeholder: unchanged
    out[0].sum().backward()
    assert pseudo.grad is not None and pseudo.grad[0].abs().sum() > 0 and pseudo.grad[1].abs().sum() == 0
    # injecting the placeholder's own embedding reproduces the plain encoding
    own = tiny_backbone.token_embedding_weight()[tiny_backbone.tokenizer.placeholder_id].detach()
    same = tiny_backbone.forward_texts_pseudo(tok, own.expand(2, -1))
    torch.testing.assert_close(same, plain)


def test_tokenizer_unknown_words_and_truncation():
    tok = WordTokenizer(WordTokenizer.build_vocab(["a red circle"]), context=5)
    out = tok(["a red circle zebra", "red"])
    ids = out["input_ids"]
    assert ids.shape == (2, 5)
    assert ids[0].tolist() == [tok.bos, tok.index["a"], tok.index["red"], tok.index["circle"], tok.eos]
    assert out["attention_mask"][1].tolist() == [True, True, True, False, False]
    assert tok(["zebra"])["input_ids"][0, 1].item() == tok.unk


def test_registry_and_errors(tmp_path):
    assert "tiny" in list_backbones()
    with pytest.raises(KeyError, match="unknown backbone 'nope'"):
        create_backbone("nope:x")
    with pytest.raises(CirlabError, match="not a shipped name"):
        create_backbone(f"tiny:{tmp_path / 'missing'}")
    (tmp_path / "d").mkdir()
    with pytest.raises(CirlabError, match="config.json not found"):
        create_backbone(f"tiny:{tmp_path / 'd'}")


def test_training_lowers_loss(small_world, tmp_path):
    from cirlab.train.backbone import BackboneTrainConfig, train_backbone

    cfg = BackboneTrainConfig(data=str(small_world / "train"), out=str(tmp_path / "tb"), max_steps=120, batch_size=32,
                              width=32, depth=1, text_depth=1, embed_dim=16, image_size=32, lr=1e-3,
                              warmup_steps=5, eval_data=str(small_world / "val"))
    summary = train_backbone(cfg, progress=False)
    losses = [e["loss"] for e in summary["log"]]
    # chance level of the symmetric InfoNCE over a batch of 32 is ln(32) = 3.47
    assert losses[-1] < losses[0] - 0.5, losses
    assert losses[-1] < math.log(32) - 1.0, losses
    model = create_backbone(f"tiny:{tmp_path / 'tb'}")
    assert model.embed_dim == 16
    n = min(1000, len(read_gallery(small_world / "val")))
    # held-out val pairs (190 images, chance R@5 2.6): seeds 0 / 1 / 2 of this config measured i2t R@5 17.89 /
    # 13.68 / 6.84 and t2i R@5 21.58 / 18.95 / 11.58 (shared machine, load ~6); the bar is twice chance, the
    # most the seed spread allows at 120 steps (seed 2 sits 1.6 above it)
    assert summary["eval"]["i2t_recall@5"] > 2 * 100 * 5 / n
    assert summary["eval"]["t2i_recall@5"] > 2 * 100 * 5 / n


def _clip_config(tiny_config):
    from dataclasses import replace

    return replace(tiny_config, text_encoder="clip", text_depth=2)


def test_clip_text_encoder_pools_end_of_text_causally(tiny_config):
    from cirlab.backbones.tiny import TinyBackbone

    torch.manual_seed(0)
    model = TinyBackbone(_clip_config(tiny_config)).eval()
    texts = ["a red circle", "a small blue square at the top left and a red circle"]
    both = model.encode_texts(texts)
    # padding after the end-of-text token is never attended to: alone or in a batch, the same feature
    torch.testing.assert_close(model.encode_texts(texts[:1]), both[:1], atol=1e-5, rtol=1e-5)
    # the feature is the end-of-text state: the output at EOS after the causal stack, projected
    tok = model.tokenize(texts[:1])
    x = model.text.embed(tok["input_ids"]) + model.text.pos[:, : tok["input_ids"].shape[1]]
    n = x.shape[1]
    mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    states = model.text.ln(model.text.blocks(x, mask=mask))
    manual = torch.nn.functional.normalize(model.text.proj(states[:, int(tok["attention_mask"].sum()) - 1]), dim=-1)
    torch.testing.assert_close(manual, both[:1], atol=1e-5, rtol=1e-5)
    # word order matters (positions), a pseudo token in a long prompt still changes the feature
    assert (model.encode_texts(["a circle red"]) - model.encode_texts(["a red circle"])).abs().max() > 1e-3
    long = model.tokenize(["a $ at the top left and a red circle at the bottom right"])
    p1, p2 = torch.randn(1, tiny_config.text_width), torch.randn(1, tiny_config.text_width)
    f1, f2 = model.forward_texts_pseudo(long, p1), model.forward_texts_pseudo(long, p2)
    assert (f1 - f2).norm() > 0.05


def test_mean_pooled_checkpoints_still_load(tmp_path):
    from cirlab.backbones.tiny import TinyConfig

    cfg = json.loads((__import__("cirlab.backbones.tiny", fromlist=["ASSETS"]).ASSETS / "tiny-world" / "config.json"
                      ).read_text())
    assert "text_encoder" not in cfg  # written before the option existed
    assert create_backbone("tiny:world").config.text_encoder == "mean"
    with pytest.raises(CirlabError, match="text_encoder"):
        TinyConfig(text_encoder="bag")


def test_locked_image_tuning_trains_the_text_tower_only(small_world, tmp_path):
    from cirlab.train.backbone import BackboneTrainConfig, train_backbone

    shape = dict(width=32, depth=1, text_depth=1, embed_dim=16, image_size=32, batch_size=32, warmup_steps=5)
    # an image tower that has learnt something (full captions), then locked while a CLIP text tower learns alt-text
    train_backbone(BackboneTrainConfig(data=str(small_world / "train"), out=str(tmp_path / "init"), max_steps=80,
                                       lr=1e-3, **shape), progress=False)
    init = create_backbone(f"tiny:{tmp_path / 'init'}")
    cfg = BackboneTrainConfig(data=str(small_world / "train"), out=str(tmp_path / "lit"), max_steps=120, lr=3e-3,
                              captions="alttext", alt_per_image=4, text_encoder="clip",
                              init_vision=f"tiny:{tmp_path / 'init'}", lock_image=True,
                              image_cache=str(tmp_path / "locked.safetensors"), **shape)
    summary = train_backbone(cfg, progress=False)
    assert summary["query_words_missing"] == []  # the alt-text corpus covers every query word
    trained = create_backbone(f"tiny:{tmp_path / 'lit'}")
    assert trained.config.text_encoder == "clip"
    for k, v in init.visual.state_dict().items():  # the image tower is the initial one
        torch.testing.assert_close(trained.visual.state_dict()[k], v)
    losses = [e["loss"] for e in summary["log"]]
    assert max(losses[-2:]) < losses[0] - 0.05, losses  # learning (partial alt-text is ambiguous: slow in 120 steps)
    assert any((trained.text.state_dict()[k] != v).any() for k, v in init.text.state_dict().items()
               if k in trained.text.state_dict() and v.shape == trained.text.state_dict()[k].shape)
    assert (tmp_path / "locked.safetensors").is_file()


def _describing_text_only_r10(spec: str, world) -> float:
    from cirlab.data import load_dataset

    ds = load_dataset(world / "test")
    desc = [t for t in ds.triplets if t.meta["register"] == "describing"]
    model = create_backbone(spec)
    gallery = model.encode_images(ds.gallery.paths)
    pos = {g: i for i, g in enumerate(ds.gallery.ids)}
    scores = model.encode_texts([t.caption for t in desc]) @ gallery.T
    for i, t in enumerate(desc):
        scores[i, pos[t.reference]] = -9.0  # reference removed, as in evaluation
    top = scores.topk(10, dim=1).indices.tolist()
    return 100.0 * sum(any(ds.gallery.ids[j] in t.targets for j in row) for row, t in zip(top, desc)) / len(desc)


def test_shipped_alt_text_checkpoint_reads_target_descriptions(tmp_path):
    """tiny:alt (CLIP text tower on alt-text, image tower of tiny:world locked) finds targets from partial describing
    texts (the change and sometimes one other object) far better than tiny:world, whose text tower saw full captions
    only (measured 42.9 vs 17.9 on this world; 39.3 with tiny:alt-600). Texts that name every object with its size and
    place read like those full captions, and there both do well (82.1 vs 78.6), so the check runs on the partial
    texts."""
    from cirlab.world import WorldConfig, generate_world

    world = tmp_path / "world"
    # where it was measured: exact edits, equal registers, every describing text at the config's detail
    exact = dict(drift=0.0, brief=0.0, registers={"procedural": 1.0, "describing": 1.0, "casual": 1.0})
    generate_world(world, WorldConfig(seed=3, describing="partial", **exact).small(60), ("test",), progress=False)
    alt = create_backbone("tiny:alt")
    assert alt.config.text_encoder == "clip"
    for k, v in create_backbone("tiny:world").visual.state_dict().items():
        torch.testing.assert_close(alt.visual.state_dict()[k], v)  # the locked image tower
    assert _describing_text_only_r10("tiny:alt", world) > _describing_text_only_r10("tiny:world", world) + 10
