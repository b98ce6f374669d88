"""Importers of Pic2Word / SEARLE / LinCIR checkpoints and the inference presets of the three methods."""
from __future__ import annotations

import argparse
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cirlab.benchmarks import get_benchmark
from cirlab.benchmarks.presets import PRESETS, InferencePreset, get_preset, method_preset
from cirlab.benchmarks.run import prompt_from
from cirlab.benchmarks.templates import PromptConfig, join_captions
from cirlab.data.record import CIRTriplet
from cirlab.errors import CirlabError
from cirlab.methods.textual_inversion import load_checkpoint
from cirlab.zoo.importers import IMPORTERS, convert


# ---- the official modules, written from their definitions ---------------------------------------------
class OfficialIM2TEXT(nn.Module):
    """Pic2Word's ``model.IM2TEXT``: n_layer x [Linear, Dropout, ReLU], then ``fc_out``."""

    def __init__(self, embed_dim: int, middle_dim: int, output_dim: int, n_layer: int = 2, dropout: float = 0.1):
        super().__init__()
        self.fc_out = nn.Linear(middle_dim, output_dim)
        dims = [embed_dim] + [middle_dim] * n_layer
        self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.Dropout(dropout), nn.ReLU())
                                      for a, b in zip(dims, dims[1:])])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.fc_out(x)


class OfficialPhi(nn.Module):
    """SEARLE's (and LinCIR's) ``Phi``: Linear, GELU, Dropout, Linear, GELU, Dropout, Linear."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, dropout: float = 0.5):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden_dim, output_dim))

    def forward(self, x):
        return self.layers(x)


def save_pic2word(path, module: nn.Module) -> None:
    """The released layout: a DDP-prefixed dict with the frozen CLIP, img2text and the optimizer."""
    torch.save({"epoch": 30, "name": "pic2word",
                "state_dict": {"module.logit_scale": torch.tensor(4.6052)},
                "state_dict_img2text": {f"module.{k}": v for k, v in module.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.1, "params": [0, 1]}]}},
               path)


def save_phi(path, module: nn.Module) -> None:
    torch.save({"Phi": module.state_dict()}, path)


# ---- importers --------------------------------------------------------------------------------------
def test_registered():
    assert {"pic2word", "searle", "lincir"} <= set(IMPORTERS.names())


@pytest.mark.parametrize("name", ["pic2word", "searle", "lincir"])
def test_import_writes_a_checkpoint_whose_phi_is_the_official_one(name, tmp_path):
    torch.manual_seed(0)
    if name == "pic2word":
        official, src = OfficialIM2TEXT(768, 512, 768), tmp_path / "pic2word_model.pt"
        save_pic2word(src, official)
    else:
        official, src = OfficialPhi(768, 3072, 768), tmp_path / "phi.pt"
        save_phi(src, official)
    out = convert(name, src, tmp_path / "ck")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == name and cfg["preset"] == name and cfg["phi"]["raw_input"] is True
    assert cfg["phi"]["activation"] == ("relu" if name == "pic2word" else "gelu")
    assert (cfg["phi"]["in_dim"], cfg["phi"]["hidden"], cfg["phi"]["out_dim"]) == \
        ((768, 512, 768) if name == "pic2word" else (768, 3072, 768))
    assert cfg["prompts"]["pseudo_at"] == ("all" if name == "lincir" else "first")
    assert cfg["training"]["imported_from"] == src.name and len(cfg["training"]["sha256"]) == 64
    assert all(k.startswith("net.") for k in load_file(str(out / "model.safetensors")))
    ck = load_checkpoint(out, name)
    x = torch.randn(5, 768) * 7
    with torch.no_grad():
        assert torch.allclose(ck.phi(x), official.eval()(x), atol=1e-5)
        assert not torch.allclose(ck.phi(x), ck.phi(torch.nn.functional.normalize(x, dim=-1)), atol=1e-3)


def test_searle_b32_and_its_backbone(tmp_path):
    torch.manual_seed(1)
    save_phi(tmp_path / "SEARLE_ViT-B32.pt", OfficialPhi(512, 2048, 512))
    out = convert("searle", tmp_path / "SEARLE_ViT-B32.pt", tmp_path / "ck")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["phi"]["in_dim"], cfg["phi"]["hidden"], cfg["phi"]["out_dim"]) == (512, 2048, 512)
    assert cfg["backbone"] == "hf:openai/clip-vit-base-patch32,preprocess=targetpad"


def test_import_errors_name_the_file(tmp_path):
    p = tmp_path / "wrong.pt"
    torch.save({"Combiner": {"x.weight": torch.zeros(2, 2)}}, p)
    with pytest.raises(CirlabError, match=r"wrong.pt.*'state_dict_img2text'"):
        convert("pic2word", p, tmp_path / "a")
    torch.save({"Phi": {"layers.0.weight": torch.zeros(8, 4), "layers.0.bias": torch.zeros(8),
                        "layers.3.weight": torch.zeros(8, 5), "layers.3.bias": torch.zeros(8)}}, p)
    with pytest.raises(CirlabError, match=r"wrong.pt: layers.3.weight takes 5 inputs but the layer before gives 8"):
        convert("searle", p, tmp_path / "b")
    torch.save({"Phi": {"net.0.weight": torch.zeros(8, 4)}}, p)
    with pytest.raises(CirlabError, match="not a SEARLE-style phi"):
        convert("lincir", p, tmp_path / "c")
    with pytest.raises(CirlabError, match="missing.pt: no such checkpoint file"):
        convert("searle", tmp_path / "missing.pt", tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "abcd")


class _Mkdir:
    """Unpickling this creates a directory: a stand-in for code a malicious checkpoint would run."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("name,key", [("pic2word", "state_dict_img2text"), ("searle", "Phi"), ("lincir", "Phi")])
def test_a_pickle_that_runs_code_is_refused_never_executed(name, key, tmp_path):
    marker = tmp_path / f"ran-{name}"
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({key: _Mkdir(str(marker))}, f, protocol=2)
    with pytest.raises(CirlabError, match="evil.pt: refused: this pickle is not weights-only"):
        convert(name, p, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    with open(p, "rb") as f:            # the file is live: a plain unpickling does run it
        pickle.load(f)
    assert marker.is_dir()


# ---- presets ----------------------------------------------------------------------------------------
def test_presets_follow_the_official_code():
    assert get_preset("pic2word", "cirr").template == "a photo of $ , {caption}"
    assert get_preset("searle", "circo").template == get_preset("lincir", "cirr").template == \
        "a photo of $ that {caption}"
    # Fashion IQ joins: Pic2Word reversed and unstripped; SEARLE/LinCIR both orders, each caption .strip('.?, ')
    c1, c2 = " is red.", "has stripes? "
    assert join_captions(c1, c2, get_preset("pic2word", "fashioniq").join) == ["has stripes?  and  is red."]
    want = ["is red and has stripes", "has stripes and is red"]
    assert join_captions(c1, c2, get_preset("searle", "fashioniq").join) == want
    assert join_captions(c1, c2, get_preset("lincir", "fashioniq").join) == want
    assert join_captions(c1, c2, "both") == ["is red. and has stripes?", "has stripes? and is red."]
    t = CIRTriplet("dress/1", "r", "", ("t",), {"captions": [c1, c2]})
    assert get_preset("searle", "fashioniq").prompt().texts(t) == [f"a photo of $ that {w}" for w in want]
    # where the pseudo token lands; which reference rule (each benchmark's protocol: removed on CIRR only)
    assert [PRESETS[f]["cirr"].pseudo_at for f in ("pic2word", "searle", "lincir")] == ["first", "first", "all"]
    for family in PRESETS:
        for bench, p in PRESETS[family].items():
            assert p.exclude_reference == get_benchmark(bench).exclude_reference, (family, bench)
    with pytest.raises(CirlabError, match="no inference preset 'nope'"):
        get_preset("nope", "cirr")
    with pytest.raises(CirlabError, match="caption join 'zz'"):
        InferencePreset("{caption}", "zz")


def test_runner_uses_the_checkpoints_preset_unless_told_otherwise(tmp_path, tiny_backbone):
    from cirlab.methods import create_method
    from cirlab.methods.textual_inversion import Checkpoint, Phi, PhiConfig, PromptTemplates

    bb = tiny_backbone
    Checkpoint("searle", Phi(PhiConfig(bb.embed_dim, bb.token_dim, 8, raw_input=True)), PromptTemplates(),
               preset="searle").save(tmp_path / "ck")
    method = create_method(f"searle:{tmp_path / 'ck'}", bb)
    assert method.preset == "searle" and method.needs_raw and method_preset(method, "fashioniq").join == "searle"
    none = argparse.Namespace(template=None, caption_join=None)
    assert prompt_from(none, method, "fashioniq") == PromptConfig("a photo of $ that {caption}", "searle")
    given = argparse.Namespace(template="{caption}", caption_join=None)
    assert prompt_from(given, method, "fashioniq") == PromptConfig("{caption}", "and")
    assert prompt_from(none, create_method("sum", bb), "fashioniq") == PromptConfig()
