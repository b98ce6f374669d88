"""Zero-shot textual-inversion methods (Pic2Word, SEARLE OTI + phi, LinCIR) on tiny and a random hf CLIP."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cirlab.backbones import create_backbone
from cirlab.cli import main
from cirlab.errors import CirlabError
from cirlab.methods import QueryBatch, create_method
from cirlab.methods.textual_inversion import (OTI, Checkpoint, ConceptVocabulary, OTIConfig, Phi, PhiConfig,
                                              PhiMethod, PromptTemplates, get_templates)
from cirlab.methods.textual_inversion.prompts import has_placeholder
from cirlab.train.textual_inversion import MethodTrainConfig, TrainingData, train_method
from cirlab.world import COLOURS, SHAPES, SIZES


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory, small_world):
    pytest.importorskip("transformers")
    from cirlab.backbones.hf_random import make_random_hf

    caps = TrainingData(small_world / "train").caption_list()[:200]
    return make_random_hf(tmp_path_factory.mktemp("hfclip"), "clip", "tiny", corpus=caps)


@pytest.fixture(params=["tiny", "hf"])
def backbone(request, tiny_backbone):
    if request.param == "tiny":
        return tiny_backbone
    return create_backbone(f"hf:{request.getfixturevalue('hf_clip_dir')}")


def _images(world, n):
    return TrainingData(world / "train", n).paths


def _placeholder_row(bb) -> torch.Tensor:
    pid = bb.tokenizer.placeholder_id if hasattr(bb.tokenizer, "placeholder_id") else bb.placeholder_id
    return bb.token_embedding_weight()[pid].detach().clone()


def test_prompt_templates():
    p = PromptTemplates()
    assert p.query_prompt("  is red ", "$") == "a photo of $ that is red"
    assert p.query_prompt("is red", "§") == "a photo of § that is red"
    assert p.image_prompt("§") == "a photo of §"
    # a benchmark template already put the pseudo word in: used as it is, placeholder swapped
    assert p.query_prompt("a photo of $ that is red", "§") == "a photo of § that is red"
    assert not has_placeholder("costs $5") and has_placeholder("$ on the left")
    assert get_templates("a picture of $ with {text}") == PromptTemplates("a picture of $", "a picture of $ with {text}")
    assert get_templates("world").image == "a picture of $"
    with pytest.raises(CirlabError, match=r"'\$'"):
        PromptTemplates(query="a photo that {text}")
    with pytest.raises(CirlabError, match="text"):
        PromptTemplates(query="a photo of $")
    with pytest.raises(CirlabError, match="preset"):
        get_templates("nonsense")


def test_mask_keywords():
    v = ConceptVocabulary(("small", "red", "circle", "large", "gray", "orange", "diamond"))
    cap = "a large gray circle at the top and a small orange diamond in the center"
    assert v.mask_keywords(cap, "$") == "a $ at the top and a $ in the center"
    assert v.mask_keywords("there are a red circle, a small star", "§") == "there are a §, a § star"
    assert v.mask_keywords("Red", "$") == "$"
    assert v.mask_keywords("nothing to see", "$") is None


def test_concept_vocabulary_is_the_tokenizers_nouns_and_attributes(tiny_backbone, hf_clip_dir):
    vocab = ConceptVocabulary.for_backbone(tiny_backbone)
    expected = [w for w in tiny_backbone.tokenizer.vocab if w in set(COLOURS) | set(SHAPES) | set(SIZES)]
    assert list(vocab.words) == expected and len(expected) == len(COLOURS) + len(SHAPES) + len(SIZES)
    hf = ConceptVocabulary.for_backbone(create_backbone(f"hf:{hf_clip_dir}"))
    assert {"red", "circle", "small"} <= set(hf.words)
    assert not {"the", "top", "left", "and", "a"} & set(hf.words)


def test_pseudo_token_changes_text_feature_and_gradients_reach_phi(backbone, small_world):
    bb = backbone
    torch.manual_seed(1)
    phi = Phi(PhiConfig(bb.embed_dim, bb.token_dim, hidden=32, dropout=0.0))
    method = PhiMethod(bb, Checkpoint("pic2word", phi, PromptTemplates(), bb.spec))
    feats = bb.encode_images(_images(small_world, 3))
    batch = QueryBatch(["make the red circle blue"] * 3, feats)
    plain = bb.encode_texts([f"a photo of {bb.placeholder} that make the red circle blue"])
    # phi that always outputs the placeholder's own embedding reproduces the plain text feature exactly
    with torch.no_grad():
        phi.net[-1].weight.zero_()
        phi.net[-1].bias.copy_(_placeholder_row(bb))
        same = method.compose(batch)
    assert torch.allclose(same, plain.expand_as(same), atol=1e-5)
    # a real mapping: the feature depends on the reference and differs from the plain text
    torch.manual_seed(2)
    method.phi = phi = Phi(PhiConfig(bb.embed_dim, bb.token_dim, hidden=32, dropout=0.0))
    out = method.compose(batch)
    assert out.shape == (3, bb.embed_dim) and torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (out - plain).norm(dim=-1).min() > 1e-3
    assert (out[0] - out[1]).norm() > 1e-4
    (out * torch.randn_like(out)).sum().backward()
    for name, p in phi.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_oti_lowers_its_objective(backbone, small_world):
    bb = backbone
    feats = bb.encode_images(_images(small_world, 8))
    cfg = OTIConfig(steps=40, batch_size=8, seed=3)
    oti = OTI(bb, ConceptVocabulary.for_backbone(bb), PromptTemplates(), cfg)
    with torch.no_grad():
        before = oti.objective(feats, oti.initial_tokens(8, torch.Generator().manual_seed(3))).item()
    tokens = oti.optimise(feats)
    with torch.no_grad():
        after = oti.objective(feats, tokens.to(bb.device)).item()
    assert tokens.shape == (8, bb.token_dim)
    assert after < before - 0.02, (before, after)
    assert all(p.grad is None for p in bb.parameters())  # only the tokens were optimised


@pytest.mark.parametrize("name", ["pic2word", "searle", "lincir"])
def test_each_method_trains_saves_and_loads(name, backbone, small_world, tmp_path):
    bb = backbone
    data = TrainingData(small_world / "train", 48)
    cfg = MethodTrainConfig(name, steps=4, batch_size=16, hidden=32, oti_images=16, oti=OTIConfig(steps=3),
                            log_every=2, lr=1e-2)
    torch.manual_seed(cfg.seed)
    fresh = Phi(PhiConfig(bb.embed_dim, bb.token_dim, 32, 3, "relu" if name == "pic2word" else "gelu", 0.1))
    ck = train_method(bb, data, cfg, tmp_path / name, progress=False)
    assert [e["step"] for e in ck.training["log"]] == [2, 4]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in ck.training["log"])
    changed = [not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ck.phi.state_dict().values())]
    assert all(changed)
    assert all(p.grad is None for p in bb.parameters())  # the backbone stays frozen
    if name == "lincir":
        assert data._features == {}  # language-only: no image was ever encoded
    saved = json.loads((tmp_path / name / "config.json").read_text())
    assert saved["method"] == name and saved["backbone"] == bb.spec and saved["prompts"]["image"] == "a photo of $"
    if name == "searle":
        assert load_file(str(tmp_path / name / "extra.safetensors"))["oti_tokens"].shape == (16, bb.token_dim)
    loaded = create_method(f"{name}:{tmp_path / name}", bb)
    feats = bb.encode_images(data.paths[:4])
    batch = QueryBatch(["remove the red circle"] * 4, feats)
    with torch.no_grad():
        assert torch.allclose(loaded.compose(batch), PhiMethod(bb, ck).compose(batch), atol=1e-6)
    assert loaded.config()["prompts"]["query"] == "a photo of $ that {text}"


def test_checkpoint_errors(tiny_backbone, tiny_config, tmp_path):
    bb = tiny_backbone
    with pytest.raises(CirlabError, match="needs a trained checkpoint"):
        create_method("pic2word", bb)
    with pytest.raises(CirlabError, match="config.json not found"):
        create_method(f"searle:{tmp_path / 'nope'}", bb)
    Checkpoint("lincir", Phi(PhiConfig(bb.embed_dim, bb.token_dim, 8)), PromptTemplates(), bb.spec,
               bb.fingerprint()).save(tmp_path / "l")
    with pytest.raises(CirlabError, match="holds a 'lincir' checkpoint"):
        create_method(f"pic2word:{tmp_path / 'l'}", bb)
    other = create_backbone("tiny:random", config=tiny_config, seed=5)
    with pytest.raises(CirlabError, match="other weights"):
        create_method(f"lincir:{tmp_path / 'l'}", other)
    Checkpoint("lincir", Phi(PhiConfig(bb.embed_dim + 1, bb.token_dim, 8)), PromptTemplates()).save(tmp_path / "d")
    with pytest.raises(CirlabError, match="embed_dim"):
        create_method(f"lincir:{tmp_path / 'd'}", bb)
    with pytest.raises(CirlabError, match="number of OTI steps"):
        create_method("searle-oti:many", bb)


def test_searle_oti_method(tiny_backbone, small_world):
    bb = tiny_backbone
    feats = bb.encode_images(_images(small_world, 3))
    m = create_method("searle-oti:5", bb)
    batch = QueryBatch(["make the red circle blue"] * 3, feats)
    with torch.no_grad():  # the retriever calls compose under no_grad; OTI must still optimise
        out = m.compose(batch)
        again = m.compose(batch)
    assert out.shape == (3, bb.embed_dim) and torch.equal(out, again)
    tokens = m.oti.optimise(F.normalize(feats, dim=-1))
    expected = bb.forward_texts_pseudo(bb.tokenize(["a photo of $ that make the red circle blue"] * 3), tokens)
    assert torch.allclose(out, expected.detach(), atol=1e-5)
    assert m.config()["oti"]["steps"] == 5


def test_cli_train_method_then_eval(tiny_backbone, small_world, tmp_path):
    tiny_backbone.save(tmp_path / "bb")
    bb = f"tiny:{tmp_path / 'bb'}"
    env = {**os.environ, "CIRLAB_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "cirlab", "train", "method", "lincir", "--data",
                        str(small_world / "train"), "--out", str(tmp_path / "lincir"), "--backbone", bb,
                        "--steps", "3", "--batch-size", "8", "--max-images", "32", "--hidden", "16"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["method"] == f"lincir:{tmp_path / 'lincir'}"
    res = tmp_path / "res.json"
    assert main(["eval", "--data", str(small_world / "test"), "--backbone", bb, "--methods",
                 f"sum,lincir:{tmp_path / 'lincir'}", "--index-dir", str(tmp_path / "idx"), "--out", str(res)]) == 0
    results = json.loads(res.read_text())["results"]
    assert [x["config"]["method"]["name"] for x in results] == ["sum", "lincir"]
    assert results[1]["config"]["method"]["prompts"]["query"] == "a photo of $ that {text}"
    assert main(["eval", "--data", str(small_world / "test"), "--backbone", bb, "--methods",
                 f"pic2word:{tmp_path / 'missing'}", "--index-dir", str(tmp_path / "idx")]) == 2


def test_experiment_zeroshot_one_command(tiny_backbone, small_world, tmp_path):
    from cirlab.data import load_dataset

    tiny_backbone.save(tmp_path / "bb")
    out = tmp_path / "exp"
    assert main(["experiment", "zeroshot", "--world", str(small_world), "--out", str(out), "--backbone",
                 f"tiny:{tmp_path / 'bb'}", "--steps", "2", "--batch-size", "8", "--max-images", "24",
                 "--oti-images", "8", "--oti-steps", "2", "--query-oti-steps", "2",
                 "--report", str(tmp_path / "docs" / "zs")]) == 0
    payload = json.loads((tmp_path / "docs" / "zs.json").read_text())
    names = [r["config"]["method"]["name"] for r in payload["results"]]
    assert names == ["image", "text", "sum", "pic2word", "searle", "lincir", "searle-oti"]
    test = load_dataset(small_world / "test")
    kinds = {t.meta["kind"] for t in test.triplets}
    for r in payload["results"]:
        assert kinds <= set(r["per_kind"])
        assert sum(r["per_kind"][k]["queries"] for k in kinds) == len(test.triplets)
    assert payload["command"].startswith("cirlab experiment zeroshot --out")
    md = (tmp_path / "docs" / "zs.md").read_text()
    assert "| pic2word |" in md and "recall@10 per edit kind" in md and payload["command"] in md
    assert (out / "results.md").read_text() == md
