"""The tiny backbone: protocol, save/load round trip, pseudo-token injection, training."""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from cirlab.backbones import create_backbone, list_backbones
from cirlab.backbones.tiny import WordTokenizer
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
    assert summary["eval"]["i2t_recall@5"] >= 0


def test_shipped_checkpoint_matches_images_to_captions(small_world):
    """tiny:world was trained on the world: it must pair unseen test scenes with their captions far above chance."""
    from cirlab.data import read_gallery

    gal = read_gallery(small_world / "test")
    n = 100
    model = create_backbone("tiny:world")
    img = model.encode_images(gal.paths[:n])
    txt = model.encode_texts(gal.captions[:n])
    acc = (img @ txt.T).argmax(1).eq(torch.arange(n)).float().mean().item()
    assert acc > 0.5, acc  # chance is 0.01
    random_model = create_backbone("tiny:random")
    r_acc = (random_model.encode_images(gal.paths[:n]) @ random_model.encode_texts(gal.captions[:n]).T
             ).argmax(1).eq(torch.arange(n)).float().mean().item()
    assert r_acc < 0.2
