"""``hf:`` backbones on real transformers architectures with random weights (CLIP and SigLIP).

Each model is built from a config with a tokenizer made offline (byte-level BPE for CLIP,
a SentencePiece model for SigLIP), saved to a directory, loaded back through
``create_backbone("hf:<dir>")`` and run through ``cirlab index``, ``cirlab search`` and
``cirlab eval`` (the real CLI entry point, in-process).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from cirlab.backbones import create_backbone  # noqa: E402
from cirlab.backbones.hf_random import build_clip_tokenizer, bytes_to_unicode, learn_bpe_merges, make_random_hf  # noqa: E402
from cirlab.cli import main  # noqa: E402
from cirlab.data import load_dataset  # noqa: E402
from cirlab.errors import CirlabError  # noqa: E402
from cirlab.index import load_index  # noqa: E402

FAMILIES = ["clip", "siglip"]


@pytest.fixture(scope="module")
def captions(small_world) -> list[str]:
    return [t.caption for t in load_dataset(small_world / "test").triplets]


@pytest.fixture(scope="module", params=FAMILIES)
def hf_dir(request, tmp_path_factory, captions) -> tuple[str, Path]:
    d = tmp_path_factory.mktemp(f"hf-{request.param}")
    make_random_hf(d, request.param, "tiny", corpus=captions, seed=1)
    return request.param, d


def test_bytes_to_unicode_is_a_bijection_onto_printables():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in m.values())
    assert m[ord("a")] == "a" and m[ord(" ")] != " "


def test_learn_bpe_merges_by_hand():
    # "low" x5, "lower" x2, "newest" x6: the most frequent pair is (w, e) in newest(6)+lower(2)? no: lower has
    # (w, e) once -> 2, newest (e, w) 6, (w, e) 6 -> (w,e) totals 8, (e, w) 6, (l, o) 7, (o, w) 5.
    words = {("l", "o", "w</w>"): 5, ("l", "o", "w", "e", "r</w>"): 2, ("n", "e", "w", "e", "s", "t</w>"): 6}
    merges = learn_bpe_merges(words, 2)
    assert merges[0] == ("w", "e")          # 2 (lower) + 6 (newest)
    assert merges[1] == ("l", "o")          # 5 + 2, ahead of (n, e)=6 and (e, s)=6


def test_clip_tokenizer_encodes_everything_without_unknowns(captions):
    tok = build_clip_tokenizer(captions)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    for text in captions[:20] + ["Ünïcödé & emoji 🙂 $ 42"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.convert_tokens_to_ids("<|startoftext|>") and ids[-1] == eos
        assert eos not in ids[1:-1]                       # no unknowns (unk would be <|endoftext|>)
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")


def test_loads_from_dir_with_its_own_processor_and_tokenizer(hf_dir):
    family, d = hf_dir
    bb = create_backbone(f"hf:{d}")
    cfg = json.loads((d / "config.json").read_text())
    assert bb.model.config.model_type == family == cfg["model_type"]
    assert type(bb.image_processor).__name__.endswith("ImageProcessorPil")    # PIL backend, no torchvision
    assert bb.placeholder == ("$" if family == "clip" else "§")
    assert bb.tokenizer.convert_ids_to_tokens(bb.placeholder_id).lstrip("\u2581").replace("</w>", "") == bb.placeholder
    # features are the pooled projected outputs of the transformers model, normalised
    from PIL import Image

    im = Image.fromarray((np.arange(40 * 30 * 3) % 251).astype(np.uint8).reshape(40, 30, 3))
    px = bb.preprocess(im)[None]
    want = bb.model.get_image_features(pixel_values=px).pooler_output
    torch.testing.assert_close(bb.forward_images(px), want / want.norm(dim=-1, keepdim=True))
    toks = bb.tokenize(["a red circle"])
    if family == "siglip":   # trained on max-length padding without an attention mask
        assert toks["input_ids"].shape[1] == bb.context and "attention_mask" not in toks
    want = bb.model.get_text_features(**toks).pooler_output
    torch.testing.assert_close(bb.forward_texts(toks), want / want.norm(dim=-1, keepdim=True))


def test_missing_dir_and_unsupported_model_are_clear_errors(tmp_path):
    with pytest.raises(CirlabError, match="hf:/path/to/model"):
        create_backbone(f"hf:{tmp_path / 'nope'}-not-a-repo")
    import transformers

    cfg = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                                  vocab_size=20)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(CirlabError, match="model_type 'bert' is not supported"):
        create_backbone(f"hf:{tmp_path / 'bert'}")


def test_cli_index_search_eval(hf_dir, small_world, tmp_path, capsys, monkeypatch):
    family, d = hf_dir
    monkeypatch.setenv("CIRLAB_CACHE", str(tmp_path / "cache"))
    spec = f"hf:{d}"
    test = small_world / "test"
    ds = load_dataset(test)
    gallery = ds.gallery
    assert main(["index", str(test), "--out", str(tmp_path / "idx"), "--backbone", spec, "--batch-size", "16"]) == 0
    assert f"indexed {len(gallery)} images with {spec}" in capsys.readouterr().out
    index, manifest = load_index(tmp_path / "idx")
    assert manifest["backbone"] == spec and index.ids == gallery.ids
    # the stored vectors are the backbone's own features of each gallery file
    bb = create_backbone(spec)
    feats = bb.encode_images(gallery.paths)
    torch.testing.assert_close(index.vectors(gallery.ids), feats, atol=1e-5, rtol=0)

    # search by image similarity alone, keeping the reference: the reference itself comes first
    ref = gallery.ids[3]
    assert main(["search", "--index", str(tmp_path / "idx"), "--reference", ref, "--text", "anything",
                 "--method", "image", "--keep-reference", "-k", "4", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    want = np.argsort(-(feats @ feats[3]).numpy(), kind="stable")[:4]
    assert [h["id"] for h in hits][0] == ref and abs(hits[0]["score"] - 1) < 1e-4
    np.testing.assert_allclose([h["score"] for h in hits], (feats @ feats[3]).numpy()[want], atol=1e-4)

    # eval: the image-only baseline's recall@K equals a ranking computed here from the features
    assert main(["eval", "--data", str(test), "--backbone", spec, "--methods", "image,sum", "--index-dir",
                 str(tmp_path / "idx"), "--json"]) == 0
    res = {r["method"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert set(res) == {"image", "sum"}
    pos = {g: i for i, g in enumerate(gallery.ids)}
    trips = [t for t in ds.triplets if t.targets]
    hits_at = {1: 0, 5: 0, 10: 0}
    for t in trips:
        s = (feats @ feats[pos[t.reference]]).numpy()
        s[pos[t.reference]] = -np.inf            # reference excluded (CIRR convention)
        order = [gallery.ids[i] for i in np.argsort(-s, kind="stable")]
        for k in hits_at:
            hits_at[k] += any(x in t.targets for x in order[:k])
    for k, h in hits_at.items():
        assert res["image"]["metrics"][f"recall@{k}"] == pytest.approx(100 * h / len(trips), abs=0.01)
