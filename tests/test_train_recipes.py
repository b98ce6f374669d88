"""``--recipe paper``: the authors' training losses for Pic2Word, SEARLE and LinCIR on tiny data."""
from __future__ import annotations

import json

import pytest
import torch

from cirlab.cli import main
from cirlab.methods import create_method
from cirlab.methods.textual_inversion import load_checkpoint
from cirlab.train.textual_inversion import (MethodTrainConfig, TrainingData, lr_factor, paper_config,
                                            train_method)


def _cfg(name, bb, **kw):
    small = {"steps": 12, "batch_size": 16, "hidden": 32, "log_every": 4, "save_every": 3, "warmup": 0,
             "oti_images": 16, "oti": {"steps": 4}}
    return paper_config(name, bb.embed_dim, **{**small, **kw})


def test_paper_settings():
    p = paper_config("pic2word", 768)
    assert (p.lr, p.weight_decay, p.hidden, p.dropout, p.warmup, p.schedule, p.batch_size) == \
        (1e-4, 0.1, 512, 0.1, 10_000, "cosine", 128)
    s = paper_config("searle", 768)
    assert (s.hidden, s.dropout, s.temperature, s.lambda_reg) == (3072, 0.5, 0.25, 0.75)
    assert (s.oti.steps, s.oti.lr, s.oti.ema, s.oti.top_k) == (350, 2e-2, 0.99, 15)
    assert abs(s.oti.lambda_cos - 1 / 1.5) < 1e-12 and abs(s.oti.lambda_reg - 0.5 / 1.5) < 1e-12
    lin = paper_config("lincir", 768)
    assert (lin.hidden, lin.dropout, lin.noise, lin.lr) == (3072, 0.5, 1.0, 1e-4)
    c = MethodTrainConfig("pic2word", steps=100, warmup=10, schedule="cosine")
    assert [round(lr_factor(i, c), 4) for i in (0, 9, 10, 55, 99)] == [0.1, 1.0, 1.0, 0.5, round(
        0.5 * (1 + __import__("math").cos(__import__("math").pi * 89 / 90)), 4)]


@pytest.mark.parametrize("name", ["pic2word", "searle", "lincir"])
def test_paper_recipe_trains_round_trips_and_resumes(name, tiny_backbone, small_world, tmp_path, monkeypatch):
    bb = tiny_backbone
    data = TrainingData(small_world / "train", 64)
    lr = 3e-3  # tiny data and few steps: a larger step than the paper's 1e-4 so the loss visibly falls
    ck = train_method(bb, data, _cfg(name, bb, lr=lr, steps=24, save_every=100), tmp_path / "full", progress=False)
    log = ck.training["log"]
    assert log[-1]["loss"] < log[0]["loss"], log
    # the checkpoint says what the paper recipe means at inference
    cfg = json.loads((tmp_path / "full" / "config.json").read_text())
    assert cfg["phi"]["raw_input"] is True and cfg["preset"] == name
    assert cfg["prompts"]["pseudo_at"] == ("all" if name == "lincir" else "first")
    assert MethodTrainConfig.from_dict(cfg["training"]["config"]) == _cfg(name, bb, lr=lr, steps=24, save_every=100)
    method = create_method(f"{name}:{tmp_path / 'full'}", bb)
    assert method.needs_raw and method.preset == name
    if name == "searle":
        assert cfg["phi"]["hidden"] == 32 and cfg["training"]["config"]["oti"]["ema"] == 0.99

    # resume: a run killed after 7 optimiser steps continues from its last saved state (step 6) to the same weights
    want = {k: v.clone() for k, v in load_checkpoint(tmp_path / "full", name).phi.state_dict().items()}
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 7 + (4 if name == "searle" else 0):   # SEARLE: its 4 OTI steps (one batch) first
            raise KeyboardInterrupt("killed")
        return real_step(self, *a, **k)

    run = _cfg(name, bb, lr=lr, steps=24, save_every=3)
    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_method(bb, data, run, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / "train-state.safetensors").is_file()
    assert not (tmp_path / "resumed" / "config.json").exists()
    steps_taken = {"n": 0}

    def counting_step(self, *a, **k):
        steps_taken["n"] += 1
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    again = train_method(bb, data, run, tmp_path / "resumed", progress=False)
    assert steps_taken["n"] == 24 - 6          # only the steps after the saved state (SEARLE: no OTI again)
    got = again.phi.state_dict()
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    assert [e["step"] for e in again.training["log"]] == [4, 8, 12, 16, 20, 24]


def test_cli_recipe_paper(tiny_backbone, small_world, tmp_path, capsys):
    d = tmp_path / "bb"
    tiny_backbone.save(d)
    out = tmp_path / "lincir"
    assert main(["train", "method", "lincir", "--recipe", "paper", "--data", str(small_world / "train"),
                 "--backbone", f"tiny:{d}", "--out", str(out), "--steps", "3", "--batch-size", "8",
                 "--hidden", "16", "--max-images", "40"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    t = cfg["training"]["config"]
    assert (t["recipe"], t["steps"], t["hidden"], t["lr"], t["dropout"]) == ("paper", 3, 16, 1e-4, 0.5)
    assert cfg["phi"]["raw_input"] is True


def test_nt_xent_by_hand():
    """NT-Xent of two views: -mean over the 2B vectors of log(exp(s(i, pair)/t) / sum_{k != i} exp(s(i, k)/t))."""
    import math

    from cirlab.train.textual_inversion import nt_xent

    a, b = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 4.0], [0.0, -1.0]])
    z = [torch.nn.functional.normalize(v, dim=0) for v in (*a, *b)]
    t, total = 0.5, 0.0
    for i in range(4):
        num = math.exp(float(z[i] @ z[(i + 2) % 4]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(4) if k != i)
        total += -math.log(num / den)
    assert abs(float(nt_xent(a, b, t)) - total / 4) < 1e-6


def test_oti_with_templates_samples_them(tiny_backbone, small_world):
    from cirlab.methods.textual_inversion import OTI, ConceptVocabulary, OTIConfig, PromptTemplates
    from cirlab.methods.textual_inversion.oti import PALAVRA_TEMPLATES

    bb = tiny_backbone
    feats = bb.encode_images(TrainingData(small_world / "train", 4).paths, normalize=False)
    seen = []
    real = bb.forward_texts_pseudo

    def spy(tokens, pseudo, *a, **k):
        seen.append(tokens["input_ids"].clone())
        return real(tokens, pseudo, *a, **k)

    bb.forward_texts_pseudo = spy
    cfg = OTIConfig(steps=6, lambda_reg=0.0, templates=PALAVRA_TEMPLATES, init_std=0.02, ema=0.99)
    oti = OTI(bb, ConceptVocabulary.for_backbone(bb), PromptTemplates(), cfg)
    out = oti.optimise(feats)
    assert len(PALAVRA_TEMPLATES) == 24 and out.shape == (4, bb.token_dim)
    rows = {tuple(r.tolist()) for ids in seen for r in ids}
    assert len(rows) > 3                          # several templates were used, not one image prompt
    # the EMA starts at the N(0, 0.02^2) initial tokens and moves 1% per step: it stays near them
    assert float(out.std()) < 0.1
