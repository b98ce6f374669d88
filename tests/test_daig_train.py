"""Supervised CIR training: FRA logits, DRSP statistics, the Combiner, the two-stage trainer, its CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from cirlab.methods.combiner import Combiner, CombinerConfig, load_combiner
from cirlab.train.drsp import DRSP
from cirlab.train.losses import contrastive_logits, contrastive_loss, margin_cosines
from cirlab.train.supervised import StageConfig, SupervisedConfig, train_stage, train_supervised


def test_fra_logits_are_cos_theta_plus_phi_on_the_diagonal_only():
    g = torch.Generator().manual_seed(0)
    q, t = F.normalize(torch.randn(5, 7, generator=g), dim=-1), F.normalize(torch.randn(5, 7, generator=g), dim=-1)
    phi, scale = 0.3, 10.0
    logits = contrastive_logits(q, t, scale, margin=phi)
    for i in range(5):
        for j in range(5):
            c = sum(float(a) * float(b) for a, b in zip(q[i], t[j]))  # independent of the matmul
            want = math.cos(math.acos(c) + phi) if i == j else c
            assert logits[i, j].item() == pytest.approx(scale * want, abs=1e-4)
    # theta + phi beyond pi is capped at pi (cos stays monotone): an antipodal pair gets -1
    cos = torch.tensor([[-0.999999, 0.2], [0.1, 1.0]])
    out = margin_cosines(cos, 0.5)
    assert out[0, 0].item() == pytest.approx(-1.0, abs=1e-5) and out[1, 1].item() == pytest.approx(math.cos(0.5), abs=2e-3)
    assert out[0, 1].item() == pytest.approx(0.2) and out[1, 0].item() == pytest.approx(0.1)
    # the margin makes the positive harder: the loss grows
    assert contrastive_loss(q, t, scale, 0.3) > contrastive_loss(q, t, scale, 0.0)


def test_contrastive_loss_masks_duplicate_targets():
    q = torch.eye(3)
    t = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])  # rows 0 and 2 share one target image
    loss = contrastive_loss(q, t, 1.0, target_ids=[7, 8, 7])
    # hand-computed: cos rows -> row0 [1,0,1] (col 2 masked), row1 [0,1,0], row2 [0,0,0] (col 0 masked)
    l0 = -math.log(math.e / (math.e + 1))
    l1 = -math.log(math.e / (math.e + 2))
    l2 = -math.log(1 / 2)
    assert loss.item() == pytest.approx((l0 + l1 + l2) / 3, rel=1e-5)


def test_drsp_keeps_the_statistics_in_expectation_and_has_the_right_variance():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(16, 6, generator=g) * torch.tensor([1.0, 2, 0.5, 1, 3, 1]) + 4.0
    drsp = DRSP(strength=1.5).train()
    draws = torch.stack([drsp(v, g) for _ in range(6000)])           # (draws, B, D)
    mu, sigma = v.mean(0), v.std(0)
    s_mu, s_sigma = sigma / 4.0, sigma / math.sqrt(30)               # B = 16: sigma/sqrt(B), sigma/sqrt(2(B-1))
    z = (v - mu) / sigma
    want_var = 1.5 ** 2 * (s_mu ** 2 + z ** 2 * s_sigma ** 2)
    assert torch.allclose(draws.mean(0), v, atol=0.05 * float(sigma.max()))          # E[v~] = v
    ratio = draws.var(0) / want_var
    assert 0.9 < ratio.mean().item() < 1.1 and ratio.min().item() > 0.8 and ratio.max().item() < 1.2
    assert torch.allclose(draws.mean(1).mean(0), mu, atol=0.02 * float(sigma.max()))  # batch mean kept
    assert torch.allclose(draws.std(1).mean(0), sigma, rtol=0.03)                      # batch std kept
    assert not torch.equal(draws[0], v)                                                # samples do change
    assert torch.equal(drsp.eval()(v), v) and torch.equal(DRSP(0.0).train()(v), v)    # identity at inference


def _features(n: int, d: int = 16, seed: int = 0):
    """A toy task with a rule: target = normalize(reference + text-dependent shift)."""
    from cirlab.train.features import FeatureTriplets

    g = torch.Generator().manual_seed(seed)
    ref = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    tgt = F.normalize(ref + txt @ torch.randn(d, d, generator=g) * 0.5, dim=-1)
    return FeatureTriplets(ref, txt, tgt, torch.arange(n))


def test_resumed_stage_equals_uninterrupted_and_refuses_other_settings(tmp_path):
    data = _features(40)
    cfg = CombinerConfig(dim=16, projection=16, hidden=32)
    two = StageConfig(epochs=2, batch_size=16, drsp=1.0)
    torch.manual_seed(0)
    a = Combiner(cfg)
    torch.manual_seed(0)
    b = Combiner(cfg)
    train_stage(a, data, two, "pretrain", tmp_path / "a", tmp_path / "a.jsonl", seed=3, progress=False)
    train_stage(b, data, StageConfig(epochs=1, batch_size=16, drsp=1.0), "pretrain", tmp_path / "b",
                tmp_path / "b.jsonl", seed=3, progress=False)
    # "interrupted" after epoch 1: a fresh process continues from the stage checkpoint
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    state["config"]["epochs"] = 2
    (tmp_path / "b" / "state.json").write_text(json.dumps(state))
    torch.manual_seed(99)
    c = Combiner(cfg)
    hist = train_stage(c, data, two, "pretrain", tmp_path / "b", tmp_path / "b.jsonl", seed=3, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2]
    for (k, x), (_, y) in zip(a.state_dict().items(), c.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), k
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 2
    from cirlab.errors import CirlabError

    with pytest.raises(CirlabError, match="other settings"):
        train_stage(Combiner(cfg), data, StageConfig(epochs=2, batch_size=8), "pretrain", tmp_path / "b",
                    tmp_path / "b.jsonl", seed=3, progress=False)


def test_combiner_trains_to_lower_loss_on_a_small_world(small_world, tmp_path):
    from cirlab.backbones import create_backbone
    from cirlab.data import load_dataset
    from cirlab.methods import create_method
    from cirlab.train.features import EvalFeatures, evaluate_features, triplet_features

    backbone = create_backbone("tiny:world")  # the shipped backbone: features worth combining
    train = load_dataset(small_world / "train")
    trips = train.triplets[:64]
    feats = triplet_features(backbone, train, tmp_path / "cache", trips, progress=False)
    # validation: the 64 queries against their own 64 targets (cheap; no gallery to encode)
    gal_ids = [f"t{i}" for i in range(64)]
    val = EvalFeatures(feats.reference, feats.text, feats.target, gal_ids, ["none"] * 64,
                       [[g] for g in gal_ids], ["all"] * 64)
    cfg = SupervisedConfig(CombinerConfig(dim=backbone.embed_dim, projection=64, hidden=128, dropout=0.0),
                           pretrain=StageConfig(epochs=3, batch_size=16, drsp=1.0),
                           finetune=StageConfig(epochs=25, batch_size=16, lr=2e-3, margin=0.1), seed=0,
                           backbone=backbone.spec, fingerprint=backbone.fingerprint())
    before = evaluate_features(Combiner(cfg.combiner).eval(), val)["all"]["recall@1"]
    ck = train_supervised(cfg, feats.subset(range(32)), tmp_path / "ck", feats.subset(range(32, 64)), val=val,
                          progress=False)
    log = [json.loads(x) for x in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["pretrain"] * 3 + ["finetune"] * 25
    fine = [r["loss"] for r in log if r["stage"] == "finetune"]
    assert fine[-1] < 0.5 * fine[0], fine
    assert all("val_recall@1" in r for r in log) and log[-1]["val_recall@1"] > before
    # the checkpoint is the method combiner:DIR and composes like the trained model
    method = create_method(f"combiner:{tmp_path / 'ck'}", backbone)
    from cirlab.methods import QueryBatch

    q = method.compose(QueryBatch([t.caption for t in trips[:5]], feats.reference[:5]))
    assert torch.allclose(q, ck.model(feats.reference[:5], feats.text[:5]), atol=1e-5)
    assert load_combiner(tmp_path / "ck", backbone).training["stages"]["finetune"]["epochs"] == 25


def test_combiner_checkpoint_errors(tiny_backbone, tmp_path):
    from cirlab.errors import CirlabError
    from cirlab.methods import create_method

    with pytest.raises(CirlabError, match="needs a trained checkpoint"):
        create_method("combiner", tiny_backbone)
    with pytest.raises(CirlabError, match="config.json not found"):
        create_method(f"combiner:{tmp_path}", tiny_backbone)
    from cirlab.methods.combiner import CombinerCheckpoint

    CombinerCheckpoint(Combiner(CombinerConfig(dim=tiny_backbone.embed_dim + 1, projection=8, hidden=8))).save(tmp_path)
    with pytest.raises(CirlabError, match="combiner dim"):
        create_method(f"combiner:{tmp_path}", tiny_backbone)


def test_cli_train_combiner_then_eval(small_world, tiny_backbone, tmp_path, capsys):
    from cirlab.cli import main

    tiny_backbone.save(tmp_path / "bb")
    bb = f"tiny:{tmp_path / 'bb'}"
    out = tmp_path / "comb"
    assert main(["train", "combiner", "--real", str(small_world / "train"), "--shots", "24", "--out", str(out),
                 "--backbone", bb, "--finetune-epochs", "3", "--batch-size", "8", "--projection", "32",
                 "--hidden", "32"]) == 0
    assert json.loads((out / "config.json").read_text())["training"]["stages"]["finetune"]["samples"] == 24
    assert main(["eval", "--data", str(small_world / "test"), "--backbone", bb, "--methods", f"combiner:{out}",
                 "--out", str(tmp_path / "res.json")]) == 0
    assert main(["train", "combiner", "--real", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no such dataset" in capsys.readouterr().err
