"""Raw projected features: backbones, the index's stored norms, query batches, raw-input phi."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cirlab.backbones import create_backbone
from cirlab.backbones.base import placeholder_mask
from cirlab.data.jsonl import load_dataset
from cirlab.errors import CirlabError, IndexMismatchError
from cirlab.index import build_index, create_index, load_index
from cirlab.methods import QueryBatch
from cirlab.methods.textual_inversion import Checkpoint, Phi, PhiConfig, PhiMethod, PromptTemplates
from cirlab.retrieval import Retriever


@pytest.fixture(scope="module")
def world_val(small_world):
    return load_dataset(small_world / "val")


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    pytest.importorskip("transformers")
    from cirlab.backbones.hf_random import make_random_hf

    return create_backbone(f"hf:{make_random_hf(tmp_path_factory.mktemp('clip'), 'clip', 'tiny')}")


def test_tiny_raw_features_are_the_projections(tiny_backbone, world_val):
    bb = tiny_backbone
    paths = world_val.gallery.paths[:5]
    pixels = bb.preprocess_batch(paths)
    with torch.no_grad():
        expect = bb.visual.proj(bb.visual.tokens(pixels)[:, 0])        # the projection, by hand
    raw = bb.encode_images(paths, normalize=False)
    assert torch.allclose(raw, expect, atol=1e-6)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(5), atol=1e-3)
    assert torch.allclose(bb.encode_images(paths), raw / raw.norm(dim=-1, keepdim=True), atol=1e-6)
    tok = bb.tokenize(["a red circle", "a big blue square"])
    with torch.no_grad():
        x = bb.text.embed(tok["input_ids"]) + bb.text.pos[:, : tok["input_ids"].shape[1]]
        h = bb.text.ln(bb.text.blocks(x, src_key_padding_mask=~tok["attention_mask"]))
        m = tok["attention_mask"].unsqueeze(-1).float()
        t_expect = bb.text.proj((h * m).sum(1) / m.sum(1))
    assert torch.allclose(bb.encode_texts(["a red circle", "a big blue square"], normalize=False), t_expect, atol=1e-5)


def test_hf_raw_features_are_the_projections(hf_clip, world_val):
    bb = hf_clip
    paths = world_val.gallery.paths[:4]
    pixels = bb.preprocess_batch(paths)
    with torch.no_grad():
        pooled = bb.model.vision_model(pixel_values=pixels).pooler_output
        expect = bb.model.visual_projection(pooled)
    raw = bb.encode_images(paths, normalize=False)
    assert torch.allclose(raw, expect, atol=1e-5)
    assert torch.allclose(bb.encode_images(paths), F.normalize(expect, dim=-1), atol=1e-5)
    texts = ["a photo of a cat", "make it green"]
    tok = bb.tokenize(texts)
    with torch.no_grad():
        out = bb.model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
        t_expect = bb.model.text_projection(out)
    assert torch.allclose(bb.encode_texts(texts, normalize=False), t_expect, atol=1e-5)
    # pseudo: raw output normalised equals the normalised output
    pseudo = torch.randn(2, bb.token_dim)
    ptok = bb.tokenize([f"a photo of {bb.placeholder}", f"{bb.placeholder} with a hat"])
    with torch.no_grad():
        r = bb.forward_texts_pseudo(ptok, pseudo, normalize=False)
        n = bb.forward_texts_pseudo(ptok, pseudo)
    assert torch.allclose(F.normalize(r, dim=-1), n, atol=1e-6) and r.norm(dim=-1).min() > 0


def test_placeholder_mask_first_or_all():
    ids = torch.tensor([[0, 5, 7, 5, 1], [0, 2, 3, 1, 1]])
    assert placeholder_mask(ids, 5).tolist() == [[False, True, False, True, False], [False] * 5]
    assert placeholder_mask(ids, 5, first_only=True).tolist() == [[False, True, False, False, False], [False] * 5]


def test_first_only_leaves_later_placeholders_alone(tiny_backbone):
    bb = tiny_backbone
    tok = bb.tokenize(["a photo of $ that is $"])
    pseudo = torch.randn(1, bb.token_dim)
    with torch.no_grad():
        first = bb.forward_texts_pseudo(tok, pseudo, first_only=True)
        every = bb.forward_texts_pseudo(tok, pseudo)
        # by hand: only position 4 ("[BOS] a photo of $") gets the vector
        x = bb.text.embed(tok["input_ids"]).clone()
        x[0, 4] = pseudo[0]
        expect = F.normalize(bb.text.forward_embeds(x, tok["attention_mask"]), dim=-1)
    assert torch.allclose(first, expect, atol=1e-6)
    assert not torch.allclose(first, every, atol=1e-3)


@pytest.mark.parametrize("spec", ["exact", "exact:fp16", "faiss:Flat", "milvus:{tmp}/norms.db"])
def test_index_keeps_raw_norms_and_reloads_them(spec, tiny_backbone, world_val, tmp_path):
    if spec.startswith("faiss"):
        pytest.importorskip("faiss")
    if spec.startswith("milvus"):
        pytest.importorskip("pymilvus")
        spec = spec.format(tmp=tmp_path)
    bb = tiny_backbone
    gallery = world_val.gallery
    index = build_index(bb, gallery, tmp_path / "idx", spec, progress=False)
    raw = bb.encode_images(gallery.paths, normalize=False)
    ids = gallery.ids[:7]
    tol = 2e-3 if "fp16" in spec else 1e-5
    assert torch.allclose(index.norms(ids), raw[:7].norm(dim=-1), atol=1e-5)
    assert torch.allclose(index.raw_vectors(ids), raw[:7], atol=tol * raw.abs().max())
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["raw_norms"] is True
    loaded, _ = load_index(tmp_path / "idx")
    assert torch.allclose(loaded.norms(gallery.ids), raw.norm(dim=-1), atol=1e-5)
    # removing and re-adding an id without its raw feature forgets its norm
    loaded.remove([ids[0]])
    loaded.add([ids[0]], F.normalize(raw[:1], dim=-1))
    with pytest.raises(IndexMismatchError, match="raw-feature norm"):
        loaded.norms([ids[0]])
    assert torch.allclose(loaded.norms(ids[1:]), raw[1:7].norm(dim=-1), atol=1e-5)


def test_old_index_without_norms_loads_and_says_raw_features_are_unavailable(tiny_backbone, world_val, tmp_path):
    bb = tiny_backbone
    d = tmp_path / "old"
    index = create_index("exact", dim=bb.embed_dim)
    index.add(world_val.gallery.ids, bb.encode_images(world_val.gallery.paths))   # as before: normalised only
    index.save(d, {"backbone": bb.spec, "fingerprint": bb.fingerprint(),
                   "paths": [str(p) for p in world_val.gallery.paths]})
    m = json.loads((d / "index.json").read_text())
    m.pop("raw_norms")                                                            # an index from an older cirlab
    (d / "index.json").write_text(json.dumps(m))
    r = Retriever.from_index(d, "sum", backbone=bb)
    t = world_val.triplets[0]
    assert r.search(t.reference, t.caption, k=3)                                  # plain methods still work
    phi = Phi(PhiConfig(bb.embed_dim, bb.token_dim, hidden=16, dropout=0.0, raw_input=True))
    method = PhiMethod(bb, Checkpoint("pic2word", phi, PromptTemplates(), bb.spec))
    with pytest.raises(IndexMismatchError, match=r"raw image features are unavailable.*cirlab index") as e:
        r.with_method(method).search(t.reference, t.caption, k=3)
    assert str(d) in str(e.value)


def test_query_batch_raw_features():
    b = QueryBatch(["x"], torch.tensor([[0.6, 0.8]]))
    with pytest.raises(CirlabError, match="needs_raw"):
        b.raw_reference_features
    b.reference_norms = torch.tensor([5.0])
    assert b.raw_reference_features.tolist() == [[3.0, 4.0]]


def test_raw_input_phi_sees_the_raw_feature(tiny_backbone, world_val, tmp_path):
    bb = tiny_backbone
    torch.manual_seed(0)
    phi_raw = Phi(PhiConfig(bb.embed_dim, bb.token_dim, hidden=16, dropout=0.0, raw_input=True)).eval()
    phi_norm = Phi(PhiConfig(bb.embed_dim, bb.token_dim, hidden=16, dropout=0.0)).eval()
    phi_norm.load_state_dict(phi_raw.state_dict())
    index = build_index(bb, world_val.gallery, tmp_path / "idx", progress=False)
    r = Retriever(bb, index, "sum", dict(zip(world_val.gallery.ids, map(str, world_val.gallery.paths))))
    refs = [t.reference for t in world_val.triplets[:4]]
    texts = [t.caption for t in world_val.triplets[:4]]
    raw_m = PhiMethod(bb, Checkpoint("searle", phi_raw, PromptTemplates(), bb.spec))
    norm_m = PhiMethod(bb, Checkpoint("searle", phi_norm, PromptTemplates(), bb.spec))
    assert raw_m.needs_raw and not norm_m.needs_raw
    batch = r.with_method(raw_m).make_batch(refs, texts)
    assert batch.reference_norms is not None
    got = raw_m.compose(batch)
    # independent: phi on the backbone's own raw features, then the query prompt
    raw = bb.encode_images([world_val.gallery.path(i) for i in refs], normalize=False)
    tok = bb.tokenize([f"a photo of $ that {t}" for t in texts])
    with torch.no_grad():
        expect = bb.forward_texts_pseudo(tok, phi_raw(raw))
    assert torch.allclose(got, expect, atol=1e-5)
    # the same weights on normalised features give another query (the scale matters)
    assert not torch.allclose(norm_m.compose(r.with_method(norm_m).make_batch(refs, texts)), got, atol=1e-3)
    # references given as image files are encoded raw too
    files = r.with_method(raw_m).make_batch([world_val.gallery.path(i) for i in refs], texts)
    assert torch.allclose(raw_m.compose(files), expect, atol=1e-5)
