"""PrediCIR: world-view geometry, predictor/fusion shapes, training, checkpoints, end to end."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cirlab.errors import CirlabError
from cirlab.methods.predicir.model import backbone_geometry, load_predicir, new_model
from cirlab.methods.predicir.views import (
    CropBox,
    ViewConfig,
    sample_crop,
    source_views,
    visible_masks,
)

# ---- world views ---------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [4, 8])
def test_sampled_crops_lie_inside_and_mask_exactly_the_outside(grid):
    cfg = ViewConfig(min_side=0.3, max_side=0.75, full_view_prob=0.0)
    gen = torch.Generator().manual_seed(1)
    lo, hi = -(-3 * grid // 10), (3 * grid) // 4  # ceil(0.3 grid), floor(0.75 grid) by hand
    seen_sides = set()
    for _ in range(200):
        box = sample_crop(grid, cfg, gen)
        assert 0 <= box.top and box.top + box.height <= grid and 0 <= box.left and box.left + box.width <= grid
        assert lo <= box.height <= hi and lo <= box.width <= hi
        seen_sides.add(box.height)
        inside = {r * grid + c for r in range(box.top, box.top + box.height)
                  for c in range(box.left, box.left + box.width)}
        assert box.masked_indices(grid) == sorted(set(range(grid * grid)) - inside)
        assert visible_masks([box], grid)[0].nonzero().flatten().tolist() == sorted(inside)
    assert seen_sides == set(range(lo, hi + 1))  # every allowed side length occurs


def test_full_view_probability_one_masks_nothing_and_bad_boxes_are_refused():
    gen = torch.Generator().manual_seed(0)
    box = sample_crop(8, ViewConfig(full_view_prob=1.0), gen)
    assert box == CropBox(0, 0, 8, 8) and box.masked_indices(8) == []
    with pytest.raises(CirlabError, match="inside"):
        CropBox(5, 0, 4, 2).visible(8)
    with pytest.raises(CirlabError):
        ViewConfig(min_side=0.9, max_side=0.5)


def test_source_view_keeps_the_box_and_fills_the_rest_with_the_border_colour():
    torch.manual_seed(0)
    img = torch.randn(2, 3, 8, 8)
    colour = torch.tensor([0.5, -1.0, 2.0])
    img[:, :, 0, :] = colour[:, None]
    img[:, :, -1, :] = colour[:, None]
    img[:, :, :, 0] = colour[:, None]
    img[:, :, :, -1] = colour[:, None]
    boxes = [CropBox(1, 1, 2, 2), CropBox(0, 2, 4, 1)]  # grid 4 of 2-pixel patches
    views = source_views(img, boxes, patch=2)
    for b, (y0, x0, y1, x1) in enumerate([(2, 2, 6, 6), (0, 4, 8, 6)]):
        for y in range(8):
            for x in range(8):
                want = img[b, :, y, x] if (y0 <= y < y1 and x0 <= x < x1) else colour
                assert torch.equal(views[b, :, y, x], want), (b, y, x)
    zero = source_views(img, boxes, patch=2, fill="zero")
    assert float(zero[0, :, 0, 0].abs().sum()) == 0.0


# ---- model ---------------------------------------------------------------------------------------

def test_geometry_and_shapes(tiny_backbone, tiny_config):
    width, grid, patch = backbone_geometry(tiny_backbone)
    assert (width, grid, patch) == (tiny_config.vision_width, tiny_config.image_size // tiny_config.patch_size,
                                    tiny_config.patch_size)
    model = new_model(tiny_backbone, width=24, depth=1, heads=2, fuse_hidden=40)
    b, n = 3, grid * grid
    src = torch.randn(b, n, width)
    visible = visible_masks([CropBox(0, 0, 2, 2), CropBox(1, 1, 3, 3), CropBox.full(grid)], grid)
    pred, pseudo = model(src, visible, torch.randn(b, tiny_backbone.embed_dim), torch.randn(b, tiny_backbone.embed_dim))
    assert pred.shape == (b, n, width) and pseudo.shape == (b, tiny_backbone.token_dim)


def test_predictor_ignores_source_tokens_outside_the_crop(tiny_backbone):
    width, grid, _ = backbone_geometry(tiny_backbone)
    model = new_model(tiny_backbone, width=24, depth=2, heads=2).eval()
    box = CropBox(1, 0, 2, 3)
    visible = visible_masks([box], grid)
    src = torch.randn(1, grid * grid, width)
    action = torch.randn(1, tiny_backbone.embed_dim)
    other = src.clone()
    other[0, box.masked_indices(grid)] = torch.randn(len(box.masked_indices(grid)), width) * 5
    with torch.no_grad():
        a = model.predictor(src, visible, action)
        b = model.predictor(other, visible, action)
        inside = src.clone()
        inside[0, visible[0].nonzero().flatten()[0]] += 3.0
        c = model.predictor(inside, visible, action)
    assert torch.allclose(a, b, atol=1e-6)           # hidden patches do not leak
    assert not torch.allclose(a, c, atol=1e-3)       # visible ones are used
    assert not torch.allclose(a, model.predictor(src, visible, action + 1.0).detach(), atol=1e-3)  # so is the action


# ---- training, checkpoint, method -----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory):
    from cirlab.backbones import create_backbone
    from cirlab.backbones.tiny import SPECIALS, TinyConfig
    from cirlab.train.predicir import (
        PrediCIRTrainConfig,
        PrediCIRTrainer,
        WorldViewData,
    )
    from cirlab.world import CELLS, COLOURS, SHAPES, SIZES

    torch.set_num_threads(1)
    words = sorted({w for x in list(COLOURS) + list(SHAPES) + list(SIZES) + list(CELLS) for w in x.split()}
                   | {"a", "the", "at", "in", "and", "add", "remove", "make", "move", "to", "picture", "of", "that"})
    cfg_b = TinyConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2, text_width=32,
                       text_depth=1, text_heads=2, embed_dim=16, vocab=SPECIALS + words)
    backbone = create_backbone("tiny:random", config=cfg_b, seed=5)
    backbone.spec = "tiny:random"
    data = WorldViewData(small_world / "train", backbone, max_images=96, progress=False)
    cfg = PrediCIRTrainConfig(steps=60, batch_size=32, lr=2e-3, width=32, depth=1, heads=2, fuse_hidden=64,
                              log_every=10)
    trainer = PrediCIRTrainer(backbone, data, cfg)
    gen = torch.Generator().manual_seed(123)
    idx = torch.arange(32)
    draw = trainer.draw(idx, gen)
    with torch.no_grad():
        before = {k: float(v) for k, v in trainer.losses(idx, *draw).items()}
    log = trainer.fit(progress=False)
    with torch.no_grad():
        after = {k: float(v) for k, v in trainer.losses(idx, *draw).items()}
    out = tmp_path_factory.mktemp("predicir") / "ck"
    ck = trainer.checkpoint(log, 0.0)
    ck.save(out)
    return backbone, data, ck, out, before, after, log


def test_world_view_data_matches_the_gallery(trained, small_world):
    from cirlab.data import read_gallery

    backbone, data, *_ = trained
    gal = read_gallery(small_world / "train")
    pos = {str(p): n for n, p in enumerate(gal.paths)}
    n = pos[str(data.paths[0])]
    assert data.captions[0] == gal.meta[n]["captions"]
    with torch.no_grad():
        px = backbone.preprocess_batch([data.paths[0]])
        tokens = backbone.forward_image_tokens(px)
        glob = backbone.forward_images(px)
        cap = backbone.encode_texts([data.captions[0][1]])
    assert torch.allclose(data.target_tokens[0].float(), tokens[0], atol=2e-2)
    assert torch.allclose(data.target_global[0], glob[0], atol=1e-5)
    assert torch.allclose(data.caption_features[0, 1], cap[0], atol=1e-5)


def test_training_lowers_the_loss(trained):
    *_, before, after, log = trained
    assert after["loss"] < before["loss"] - 0.3, (before, after)
    assert after["prediction"] < before["prediction"], (before, after)
    assert after["alignment"] < before["alignment"], (before, after)
    assert [e["step"] for e in log] == [10, 20, 30, 40, 50, 60]


def test_checkpoint_round_trip(trained):
    backbone, _, ck, out, *_ = trained
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "predicir" and cfg["fingerprint"] == backbone.fingerprint()
    assert (out / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    loaded = load_predicir(out, backbone)
    a, b = ck.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.prompts == ck.prompts and loaded.model.cfg == ck.model.cfg
    from cirlab.backbones import create_backbone

    other = create_backbone("tiny:random", config=backbone.config, seed=6)
    with pytest.raises(CirlabError, match="fingerprint"):
        load_predicir(out, other)
    with pytest.raises(CirlabError, match="not found"):
        load_predicir(out / "missing", backbone)


def test_method_end_to_end(trained, small_world, tmp_path):
    from cirlab.data import load_dataset
    from cirlab.eval.evaluate import evaluate_methods
    from cirlab.methods import QueryBatch, create_method

    backbone, _, ck, out, *_ = trained
    method = create_method(f"predicir:{out}", backbone)
    assert method.needs_pixels
    test = load_dataset(small_world / "test")
    trips = test.triplets[:5]
    refs = [test.gallery.path(t.reference) for t in trips]
    feats = backbone.encode_images(refs)
    batch = QueryBatch([t.caption for t in trips], feats, refs)
    with torch.no_grad():
        q = method.compose(batch)
        # the same query by hand: full reference visible, text feature as action, "a picture of $ that {text}"
        px = backbone.preprocess_batch(refs)
        _, pseudo = ck.model(backbone.forward_image_tokens(px), torch.ones(5, 16, dtype=torch.bool),
                             backbone.encode_texts([t.caption for t in trips]), F.normalize(feats, dim=-1))
        tok = backbone.tokenize([f"a picture of $ that {t.caption}" for t in trips])
        want = backbone.forward_texts_pseudo(tok, pseudo)
    assert q.shape == (5, backbone.embed_dim)
    assert torch.allclose(q, want, atol=1e-5)
    assert torch.allclose(q.norm(dim=-1), torch.ones(5), atol=1e-5)
    (res,) = evaluate_methods(test, backbone, [f"predicir:{out}"], tmp_path / "index", progress=False)
    n = len([t for t in test.triplets if t.targets])
    assert res.config["queries"] == n
    # what evaluate reports is the recall of these queries (one query of slack for near ties); whether the
    # pseudo word uses the predicted content is tests/test_learned_methods.py's check
    from recall_by_hand import recall_by_hand

    by_hand = recall_by_hand(method, test, backbone)
    assert res.metrics["recall@10"] == pytest.approx(by_hand, abs=100 / n + 0.01), by_hand



def test_cli_train_predicir(small_world, tmp_path, capsys):
    from cirlab.backbones import create_backbone
    from cirlab.cli import main

    out = tmp_path / "ck"
    rc = main(["train", "predicir", "--data", str(small_world / "train"), "--out", str(out), "--steps", "3",
               "--batch-size", "8", "--max-images", "16", "--depth", "1", "--threads", "1", "--seed", "2"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == f"predicir:{out}" and printed["log"][-1]["step"] == 3
    ck = load_predicir(out, create_backbone("tiny:world"))
    assert ck.training["images"] == 16 and ck.training["config"]["seed"] == 2 and ck.model.cfg.depth == 1
