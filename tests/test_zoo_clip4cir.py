"""CLIP4Cir: the official Combiner checkpoint layout -> cirlab's combiner:DIR, equal to the official forward."""
from __future__ import annotations

import math
import pickle
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cirlab.errors import CirlabError
from cirlab.methods.combiner import load_combiner
from cirlab.zoo.importers import convert

# RN50x4: CLIP feature 640, projection 4 x 640, hidden 8 x 640 (combiner_train.py's defaults)
DIM, PROJ, HIDDEN = 640, 2560, 5120


class OfficialCombiner(nn.Module):
    """Written from the layer definitions of CLIP4Cir's src/combiner.py (names and shapes as there)."""

    def __init__(self, dim: int, proj: int, hidden: int) -> None:
        super().__init__()
        self.text_projection_layer = nn.Linear(dim, proj)
        self.image_projection_layer = nn.Linear(dim, proj)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(0.5), nn.Dropout(0.5), nn.Dropout(0.5)
        self.combiner_layer = nn.Linear(proj * 2, hidden)
        self.output_layer = nn.Linear(hidden, dim)
        self.dynamic_scalar = nn.Sequential(nn.Linear(proj * 2, hidden), nn.ReLU(), nn.Dropout(0.5),
                                            nn.Linear(hidden, 1), nn.Sigmoid())
        self.logit_scale = 100

    def combine_features(self, image, text):
        t = self.dropout1(F.relu(self.text_projection_layer(text)))
        i = self.dropout2(F.relu(self.image_projection_layer(image)))
        raw = torch.cat((t, i), -1)
        comb = self.dropout3(F.relu(self.combiner_layer(raw)))
        g = self.dynamic_scalar(raw)
        return F.normalize(self.output_layer(comb) + g * text + (1 - g) * image, dim=-1)

    def forward(self, image, text, target):
        return self.logit_scale * self.combine_features(image, text) @ F.normalize(target, dim=-1).T


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    torch.manual_seed(0)
    ref = OfficialCombiner(DIM, PROJ, HIDDEN).eval()
    for p in ref.parameters():   # biases away from zero so a normalised input would change the output
        nn.init.normal_(p, std=0.05)
    path = tmp_path_factory.mktemp("official") / "combiner.pt"
    torch.save({"Combiner": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    return ref, path


def test_imported_combiner_equals_the_official_forward(official, tmp_path):
    ref, path = official
    out = convert("clip4cir", path, tmp_path / "ck", backbone="openclip:RN50x4")
    ck = load_combiner(out)
    cfg = ck.model.cfg
    assert (cfg.dim, cfg.projection, cfg.hidden, cfg.order, cfg.fixed_scale, cfg.raw_input) == \
        (DIM, PROJ, HIDDEN, "text-image", 100.0, True)
    assert ck.backbone == "openclip:RN50x4"
    g = torch.Generator().manual_seed(1)
    # raw CLIP features: norms far from 1, as RN50x4's are
    image, text, target = (torch.randn(6, DIM, generator=g) * 3 for _ in range(3))
    with torch.no_grad():
        want = ref.combine_features(image, text)
        got = ck.model(image, text)
        assert torch.allclose(got, want, atol=1e-5)
        logits = ck.model.scale() * got @ F.normalize(target, dim=-1).T
        assert torch.allclose(logits, ref(image, text, target), atol=1e-4)
        # the official order and raw input matter: cirlab's defaults give other outputs with the same weights
        for change in ({"order": "image-text"}, {"raw_input": False}):
            ck.model.cfg = replace(cfg, **change)
            assert (ck.model(image, text) - want).abs().max() > 1e-3, change
        ck.model.cfg = cfg
    assert ck.model.scale().item() == 100.0
    assert math.isclose(ck.model.logit_scale.exp().item(), 100.0, rel_tol=1e-6)


def test_wrong_layouts_are_refused_with_the_file_named(tmp_path):
    ref = OfficialCombiner(8, 16, 32)
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": ref.state_dict()}, bad)
    with pytest.raises(CirlabError, match="bad.pt.*'Combiner' or 'CLIP'"):
        convert("clip4cir", bad, tmp_path / "o1")
    extra = tmp_path / "extra.pt"
    torch.save({"Combiner": {**ref.state_dict(), "mystery.weight": torch.zeros(2)}}, extra)
    with pytest.raises(CirlabError, match="extra.pt: unexpected Combiner key 'mystery.weight'"):
        convert("clip4cir", extra, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_is_not_weights_only_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"Combiner": _Payload()}, f, protocol=2)
    with pytest.raises(CirlabError, match="evil.pt: refused: this pickle is not weights-only"):
        convert("clip4cir", p, tmp_path / "out")
    assert "this must never run" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_clip4cir_caption_join_by_hand():
    from cirlab.benchmarks.templates import PromptConfig, join_captions

    assert join_captions("  is RED, ", "has stripes.", "clip4cir") == ["Is red and has stripes"]
    assert join_captions("?is darker.", " has a collar?", "clip4cir") == ["Is darker and has a collar"]
    cfg = PromptConfig(join="clip4cir")
    rec = cfg.to_json(True)
    assert (rec["join_formats"], rec["join_strip"], rec["join_capitalize"]) == (["{c1} and {c2}"], ".?, ", True)
