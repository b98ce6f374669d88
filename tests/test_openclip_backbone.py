"""``openclip:`` backbones: a randomly initialised small open_clip model through the CLI, and the
one-line install hint when the extra is missing.

open_clip needs torchvision (torch 2.14.1 + torchvision 0.29.1 here), so the CLI test runs in
its own environment: ``make test-openclip`` (``.venv-openclip``). In the main environment only
the missing-extra test runs.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

HAS_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None

TINY_CFG = {"model_cfg": {"embed_dim": 16,
                          "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
                          "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2,
                                       "layers": 2}},
            "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


@pytest.mark.skipif(HAS_OPEN_CLIP, reason="open_clip is installed here")
def test_missing_extra_is_a_one_line_hint(tmp_path):
    from cirlab.backbones import create_backbone
    from cirlab.backbones.extras import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"pip install 'cirlab\[openclip\]'"):
        create_backbone("openclip:ViT-B-32/openai")
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    r = subprocess.run([sys.executable, "-m", "cirlab", "index", str(tmp_path / "photos"), "--out", str(tmp_path / "i"),
                        "--backbone", "openclip:ViT-B-32/openai"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["cirlab: error: the openclip: backbones need open_clip: "
                                             "pip install 'cirlab[openclip]'"]


@pytest.fixture(scope="module")
def openclip_dir(tmp_path_factory):
    pytest.importorskip("open_clip")
    from cirlab.backbones import create_backbone

    src = tmp_path_factory.mktemp("oc-config")
    (src / "open_clip_config.json").write_text(json.dumps(TINY_CFG))
    torch.manual_seed(3)
    bb = create_backbone(f"openclip:{src}")          # random weights: the config names no checkpoint
    out = tmp_path_factory.mktemp("oc-saved")
    bb.save(out)
    return out


@pytest.mark.skipif(not HAS_OPEN_CLIP, reason="needs open_clip (make test-openclip)")
def test_openclip_real_tokenizer_and_placeholder(openclip_dir):
    from cirlab.backbones import create_backbone

    bb = create_backbone(f"openclip:{openclip_dir}")
    ids = bb.tokenize(["a photo of $ that is red"])["input_ids"][0].tolist()
    # open_clip's own BPE vocabulary (shipped in its wheel): <start> a photo of $ that is red <end>
    assert ids[0] == 49406 and ids[ids.index(49407) - 1] != 49406 and bb.placeholder == "$"
    assert bb.placeholder_id in ids and bb.tokenizer.decoder[bb.placeholder_id] == "$</w>"


@pytest.mark.skipif(not HAS_OPEN_CLIP, reason="needs open_clip (make test-openclip)")
def test_cli_index_search_eval(openclip_dir, small_world, tmp_path, capsys, monkeypatch):
    from cirlab.backbones import create_backbone
    from cirlab.cli import main
    from cirlab.data import load_dataset
    from cirlab.index import load_index

    monkeypatch.setenv("CIRLAB_CACHE", str(tmp_path / "cache"))
    spec = f"openclip:{openclip_dir}"
    test = small_world / "test"
    ds = load_dataset(test)
    assert main(["index", str(test), "--out", str(tmp_path / "idx"), "--backbone", spec]) == 0
    assert f"indexed {len(ds.gallery)} images" in capsys.readouterr().out
    index, manifest = load_index(tmp_path / "idx")
    feats = create_backbone(spec).encode_images(ds.gallery.paths)
    torch.testing.assert_close(index.vectors(ds.gallery.ids), feats, atol=1e-5, rtol=0)

    ref = ds.gallery.ids[5]
    assert main(["search", "--index", str(tmp_path / "idx"), "--reference", ref, "--text", "bigger",
                 "--method", "image", "--keep-reference", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    s = (feats @ feats[5]).numpy()
    assert [h["id"] for h in hits] == [ds.gallery.ids[i] for i in np.argsort(-s, kind="stable")[:3]]

    assert main(["eval", "--data", str(test), "--backbone", spec, "--methods", "image,text,sum",
                 "--index-dir", str(tmp_path / "idx"), "--json"]) == 0
    res = {r["method"]: r["metrics"] for r in json.loads(capsys.readouterr().out)["results"]}
    assert set(res) == {"image", "text", "sum"}
    # each reported recall is that of the method's queries ranked by hand (one query of slack for near ties)
    from recall_by_hand import recall_by_hand

    from cirlab.methods import create_method

    bb, n = create_backbone(spec), len([t for t in ds.triplets if t.targets])
    for name, metrics in res.items():
        by_hand = recall_by_hand(create_method(name, bb), ds, bb)
        assert metrics["recall@10"] == pytest.approx(by_hand, abs=100 / n + 0.01), (name, by_hand)


@pytest.mark.skipif(not HAS_OPEN_CLIP, reason="needs open_clip (make test-openclip)")
def test_raw_features_and_targetpad(openclip_dir, tmp_path):
    """Raw features are open_clip's own unnormalised outputs; ``,preprocess=targetpad`` equals the official
    ``targetpad_transform`` built from torchvision (TargetPad, Resize(bicubic), CenterCrop, ToTensor,
    Normalize) with the model's input size, mean and std, on odd-sized images."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    from cirlab.backbones import create_backbone

    bb = create_backbone(f"openclip:{openclip_dir},preprocess=targetpad,target_ratio=1.25")
    plain = create_backbone(f"openclip:{openclip_dir}")

    def official_pad(image):  # the official TargetPad, as written in SEARLE's and CLIP4Cir's code
        w, h = image.size
        if max(w, h) / min(w, h) < 1.25:
            return image
        scaled = max(w, h) / 1.25
        hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
        return TF.pad(image, [hp, vp, hp, vp], 0, "constant")

    official = Compose([official_pad, Resize(32, interpolation=InterpolationMode.BICUBIC), CenterCrop(32),
                        ToTensor(), Normalize([0.5] * 3, [0.25] * 3)])
    rng = np.random.default_rng(0)
    for w, h in [(37, 91), (200, 61), (251, 200), (64, 64)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.allclose(bb.preprocess(img), official(img), atol=1e-6), (w, h)
    pixels = torch.stack([bb.preprocess(Image.fromarray(rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)))])
    with torch.no_grad():
        raw = bb.forward_images(pixels, normalize=False)
        assert torch.allclose(raw, bb.model.encode_image(pixels), atol=1e-6)
        assert torch.allclose(bb.forward_images(pixels), torch.nn.functional.normalize(raw, dim=-1), atol=1e-6)
        tok = bb.tokenize(["a photo of $ that is red"])
        assert torch.allclose(bb.forward_texts(tok, normalize=False), bb.model.encode_text(tok["input_ids"]),
                              atol=1e-6)
    assert plain.preprocess_config() != bb.preprocess_config()
