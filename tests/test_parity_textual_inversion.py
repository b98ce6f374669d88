"""Parity with the official Pic2Word, SEARLE and LinCIR inference, offline.

For each importer: an official-layout checkpoint (official key names and shapes, random values) saved in
the official file format is imported, and cirlab's composed query (index with raw-feature norms ->
retriever -> phi on the raw feature -> the pseudo token in the prompt -> the text feature) must equal
an independent forward written here from the official definitions, to 1e-5, on a randomly initialised
CLIP with OpenAI's ViT-L/14 or ViT-B/32 widths, heads, patch, input and context sizes. To keep the test
fast the towers have ONE transformer layer each (the official ones have 24 + 12 and 12 + 12); every
shape a phi or a pseudo token meets is the official one.

The independent side does not use transformers: the CLIP forward below is OpenAI's definition (pre-LN
blocks, quick-GELU, causal text attention, pooling at the end-of-text token = the highest id), reading
the same weights; the prompts are the official strings (Pic2Word's ``*``, SEARLE's ``$``), padded to 77
with zeros as OpenAI's tokenizer does, and the pseudo token replaces what each official code replaces:
the first ``*`` (Pic2Word), the first ``$`` of each row (SEARLE), every ``$`` (LinCIR).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cirlab.backbones import create_backbone
from cirlab.benchmarks.presets import get_preset
from cirlab.data.record import CIRTriplet, Gallery
from cirlab.index import build_index
from cirlab.methods import create_method
from cirlab.retrieval import Retriever
from cirlab.zoo.importers import convert

from test_targetpad import noise_image, official_targetpad
from test_zoo_textual_inversion import OfficialIM2TEXT, OfficialPhi, save_phi, save_pic2word

pytest.importorskip("transformers")

CONTEXT = 77
CAPTIONS = ["is red and has stripes", "has no collar, and $ sleeves", "the same but bigger"]
SIZES = [(300, 180), (150, 260), (224, 224)]


# ---- OpenAI CLIP, from its definition ------------------------------------------------------------------
def _ln(x, p, name):
    return F.layer_norm(x, (x.shape[-1],), p[f"{name}.weight"], p[f"{name}.bias"], 1e-5)


def _block(x, p, pre, heads, causal):
    h = _ln(x, p, pre + "layer_norm1")
    b, n, d = h.shape
    q, k, v = (F.linear(h, p[f"{pre}self_attn.{t}_proj.weight"], p[f"{pre}self_attn.{t}_proj.bias"])
               .view(b, n, heads, d // heads).transpose(1, 2) for t in "qkv")
    att = (q @ k.transpose(-1, -2)) / (d // heads) ** 0.5
    if causal:
        att = att.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    o = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    x = x + F.linear(o, p[pre + "self_attn.out_proj.weight"], p[pre + "self_attn.out_proj.bias"])
    h = F.linear(_ln(x, p, pre + "layer_norm2"), p[pre + "mlp.fc1.weight"], p[pre + "mlp.fc1.bias"])
    h = h * torch.sigmoid(1.702 * h)                                             # quick-GELU
    return x + F.linear(h, p[pre + "mlp.fc2.weight"], p[pre + "mlp.fc2.bias"])


def _layers(p, tower):
    return sorted({int(k.split(".")[3]) for k in p if k.startswith(f"{tower}.encoder.layers.")})


def official_image_features(p, cfg, pixels):
    """Raw projected image features: conv patches, class token, positions, ln_pre, blocks, ln_post(CLS), proj."""
    vc = cfg.vision_config
    x = F.conv2d(pixels, p["vision_model.embeddings.patch_embedding.weight"], stride=vc.patch_size)
    x = x.flatten(2).transpose(1, 2)
    cls = p["vision_model.embeddings.class_embedding"].expand(len(x), 1, -1)
    x = torch.cat([cls, x], 1) + p["vision_model.embeddings.position_embedding.weight"]
    x = _ln(x, p, "vision_model.pre_layrnorm")
    for i in _layers(p, "vision_model"):
        x = _block(x, p, f"vision_model.encoder.layers.{i}.", vc.num_attention_heads, False)
    return F.linear(_ln(x[:, 0], p, "vision_model.post_layernorm"), p["visual_projection.weight"])


def official_text_features(p, cfg, ids, pseudo, where):
    """Text features with ``pseudo[b]`` at ``where[b]``: embed, replace, positions, causal blocks, ln_final,
    the end-of-text token (the highest id), text projection."""
    x = p["text_model.embeddings.token_embedding.weight"][ids].clone()
    x[where] = pseudo.unsqueeze(1).expand_as(x)[where]
    x = x + p["text_model.embeddings.position_embedding.weight"][: ids.shape[1]]
    for i in _layers(p, "text_model"):
        x = _block(x, p, f"text_model.encoder.layers.{i}.", cfg.text_config.num_attention_heads, True)
    x = _ln(x, p, "text_model.final_layer_norm")
    return F.linear(x[torch.arange(len(x)), ids.argmax(-1)], p["text_projection.weight"])


def official_tokens(tokenizer, texts):
    """OpenAI-style: start, BPE ids, end, zero padding to 77."""
    out = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
    for n, t in enumerate(texts):
        ids = tokenizer(t)["input_ids"]
        out[n, : len(ids)] = torch.tensor(ids)
    return out


def _where(ids, token_id, first_only):
    hit = ids == token_id
    if not first_only:
        return hit
    out = torch.zeros_like(hit)
    for b in range(len(ids)):
        cols = hit[b].nonzero()
        if len(cols):
            out[b, cols[0, 0]] = True
    return out


# ---- the fixtures: a CLIP at official sizes, a gallery of odd-sized images ---------------------------
@pytest.fixture(scope="module", params=["vit-l14-1layer", "vit-b32-1layer"])
def clip_dir(request, tmp_path_factory):
    from cirlab.backbones.hf_random import make_random_hf

    return make_random_hf(tmp_path_factory.mktemp(request.param), "clip", request.param, corpus=CAPTIONS, seed=3)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    d = tmp_path_factory.mktemp("gallery")
    paths = []
    for n, (w, h) in enumerate(SIZES):
        paths.append(d / f"img{n}.png")
        noise_image(w, h, 10 + n).save(paths[-1])
    return Gallery([f"g{n}" for n in range(len(paths))], paths)


def _official_checkpoint(name, width, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    if name == "pic2word":
        module, src = OfficialIM2TEXT(width, 512, width), tmp_path / "pic2word_model.pt"
        save_pic2word(src, module)
    else:
        module, src = OfficialPhi(width, 4 * width, width), tmp_path / f"{name}.pt"
        save_phi(src, module)
    return module.eval(), src


FAMILY = {  # official prompt (with its own placeholder word), token replaced, preprocessing
    "pic2word": ("a photo of * , {}", "*", True, "clip"),
    "searle": ("a photo of $ that {}", "$", True, "targetpad"),
    "lincir": ("a photo of $ that {}", "$", False, "clip"),
}


@pytest.mark.parametrize("name", ["pic2word", "searle", "lincir"])
def test_imported_checkpoint_composes_what_the_official_code_does(name, clip_dir, gallery, tmp_path):
    template, word, first_only, preprocessing = FAMILY[name]
    spec = f"hf:{clip_dir}" + (",preprocess=targetpad" if preprocessing == "targetpad" else "")
    bb = create_backbone(spec)
    official, src = _official_checkpoint(name, bb.embed_dim, tmp_path)
    ck = convert(name, src, tmp_path / "ck", backbone=spec)
    method = create_method(f"{name}:{ck}", bb)
    assert method.needs_raw
    index = build_index(bb, gallery, tmp_path / "index", progress=False, cache=False)
    r = Retriever(bb, index, method, dict(zip(gallery.ids, map(str, gallery.paths))))
    prompt = get_preset(name, "cirr").prompt()
    refs = gallery.ids
    texts = [prompt.texts(CIRTriplet(f"q{n}", ref, cap))[0] for n, (ref, cap) in enumerate(zip(refs, CAPTIONS))]
    got = method.compose(r.make_batch(refs, texts))

    # the independent side: official pixels, OpenAI CLIP, the official phi, the official prompt
    p = {k: v.detach().float() for k, v in bb.model.state_dict().items()}
    cfg = bb.model.config
    if preprocessing == "targetpad":
        pixels = torch.stack([official_targetpad(noise_image(w, h, 10 + n), 1.25, cfg.vision_config.image_size)
                              for n, (w, h) in enumerate(SIZES)])
    else:
        pixels = bb.preprocess_batch(gallery.paths)          # the model's own CLIP processor
    with torch.no_grad():
        image = official_image_features(p, cfg, pixels)
        pseudo = official(image)
        ids = official_tokens(bb.tokenizer, [template.format(c) for c in CAPTIONS])
        where = _where(ids, bb.tokenizer.convert_tokens_to_ids(f"{word}</w>"), first_only)
        want = F.normalize(official_text_features(p, cfg, ids, pseudo, where), dim=-1)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # the index kept exactly the raw features the official phi takes
    assert torch.allclose(index.raw_vectors(refs), image, atol=1e-4 * float(image.abs().max()))

    # the learned core matters: phi on normalised features, or no pseudo token, gives other queries
    with torch.no_grad():
        other = F.normalize(official_text_features(p, cfg, ids, official(F.normalize(image, dim=-1)), where), dim=-1)
        swapped = F.normalize(official_text_features(p, cfg, ids, image[:, : bb.token_dim] * 0, where), dim=-1)
    assert not torch.allclose(got, other, atol=1e-3) and not torch.allclose(got, swapped, atol=1e-3)


def test_where_the_pseudo_token_lands(clip_dir, tmp_path):
    """The caption "... $ sleeves" has a second ``$``: SEARLE leaves it alone, LinCIR replaces it too."""
    bb = create_backbone(f"hf:{clip_dir}")
    dollar = bb.tokenizer.convert_tokens_to_ids("$</w>")
    p = {k: v.detach().float() for k, v in bb.model.state_dict().items()}
    text = "a photo of $ that " + CAPTIONS[1]
    ids = official_tokens(bb.tokenizer, [text])
    assert int((ids == dollar).sum()) == 2
    pseudo = torch.randn(1, bb.token_dim)
    results = {}
    for name in ("searle", "lincir"):
        official, src = _official_checkpoint(name, bb.embed_dim, tmp_path / name)
        method = create_method(f"{name}:{convert(name, src, tmp_path / name / 'ck', backbone=bb.spec)}", bb)
        tok = bb.tokenize(method.query_texts([text]))
        with torch.no_grad():
            results[name] = bb.forward_texts_pseudo(tok, pseudo, first_only=method.prompts.first_only)
            want = F.normalize(official_text_features(p, bb.model.config, ids, pseudo,
                                                      _where(ids, dollar, name == "searle")), dim=-1)
        assert torch.allclose(results[name], want, atol=1e-5), name
    assert not torch.allclose(results["searle"], results["lincir"], atol=1e-3)


def test_fashioniq_both_orders_average(clip_dir, gallery, tmp_path):
    """SEARLE's Fashion IQ query: the normalised mean of both caption orders, each caption .strip('.?, ')."""
    bb = create_backbone(f"hf:{clip_dir},preprocess=targetpad")
    official, src = _official_checkpoint("searle", bb.embed_dim, tmp_path)
    method = create_method(f"searle:{convert('searle', src, tmp_path / 'ck', backbone=bb.spec)}", bb)
    index = build_index(bb, gallery, tmp_path / "index", progress=False, cache=False)
    r = Retriever(bb, index, method, dict(zip(gallery.ids, map(str, gallery.paths))))
    caps = ["is red.", " has stripes? "]
    variants = get_preset("searle", "fashioniq").prompt().texts(CIRTriplet("q", "g0", "", ("g1",),
                                                                           {"captions": caps}))
    _, _, queries = r.search_variants([r.make_batch(["g0"], [v]) for v in variants], k=2)
    p = {k: v.detach().float() for k, v in bb.model.state_dict().items()}
    cfg = bb.model.config
    with torch.no_grad():
        image = official_image_features(p, cfg, official_targetpad(noise_image(*SIZES[0], 10), 1.25, 224)[None])
        pseudo = official(image)
        feats = []
        for a, b in ((0, 1), (1, 0)):
            ids = official_tokens(bb.tokenizer, [f"a photo of $ that {caps[a].strip('.?, ')} and "
                                                 f"{caps[b].strip('.?, ')}"])
            where = _where(ids, bb.tokenizer.convert_tokens_to_ids("$</w>"), True)
            feats.append(F.normalize(official_text_features(p, cfg, ids, pseudo, where), dim=-1))
        want = F.normalize((feats[0] + feats[1]) / 2, dim=-1)
    assert torch.allclose(queries, want, atol=1e-5)
