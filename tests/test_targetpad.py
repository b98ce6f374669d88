"""TargetPad preprocessing (``hf:...,preprocess=targetpad``) against an independent implementation of the
official ``targetpad_transform`` (SEARLE / CLIP4Cir), pixel for pixel, on odd-sized images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cirlab.backbones.preprocess import PreprocessOptions, split_backbone_options, targetpad_pixels
from cirlab.errors import CirlabError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# (w, h): tall and wide beyond the ratio, just above and just below 1.25, square, and tiny
SIZES = [(37, 91), (200, 61), (251, 200), (250, 201), (100, 100), (123, 99), (13, 7)]


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def official_targetpad(image: Image.Image, target_ratio: float, dim: int) -> torch.Tensor:
    """Written from the official definition, step by step, with arrays where the definition allows:
    TargetPad (black, [hp, vp, hp, vp]) -> Resize(dim, bicubic; shorter side, longer int-truncated) ->
    CenterCrop(dim; offsets int(round((size - dim) / 2))) -> ToTensor (/255) -> Normalize."""
    w, h = image.size
    if max(w, h) / min(w, h) >= target_ratio:
        scaled = max(w, h) / target_ratio
        hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
        arr = np.pad(np.asarray(image), ((vp, vp), (hp, hp), (0, 0)), constant_values=0)
        image = Image.fromarray(arr)
    w, h = image.size
    size = (dim, int(dim * h / w)) if w <= h else (int(dim * w / h), dim)
    if size != (w, h):
        image = image.resize(size, Image.BICUBIC)
    arr = np.asarray(image).astype(np.float32)
    top, left = int(round((arr.shape[0] - dim) / 2.0)), int(round((arr.shape[1] - dim) / 2.0))
    arr = arr[top:top + dim, left:left + dim] / 255.0
    arr = (arr - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


@pytest.mark.parametrize("ratio", [1.25, 1.6])
def test_targetpad_pixels_match_the_official_definition(ratio):
    for n, (w, h) in enumerate(SIZES):
        img = noise_image(w, h, n)
        got = targetpad_pixels(img, 32, MEAN, STD, ratio)
        want = official_targetpad(img, ratio, 32)
        assert got.shape == (3, 32, 32)
        assert torch.allclose(got, want, atol=1e-6), (w, h, ratio)


def test_targetpad_pads_only_beyond_the_ratio():
    tall = Image.new("RGB", (40, 100), (255, 255, 255))       # ratio 2.5: padded to 80 x 100 (20 px each side)
    x = targetpad_pixels(tall, 100, (0, 0, 0), (1, 1, 1))
    assert x[:, :, :5].abs().max() == 0 and x[:, :, 95:].abs().max() == 0       # black bars left and right
    assert torch.allclose(x[:, 40:60, 30:70], torch.ones(3, 20, 40))            # the white image in the middle
    near_square = Image.new("RGB", (110, 100), (255, 255, 255))                 # ratio 1.1 < 1.25: no padding
    assert torch.allclose(targetpad_pixels(near_square, 50, (0, 0, 0), (1, 1, 1)), torch.ones(3, 50, 50))


def test_spec_options():
    assert split_backbone_options("openai/clip-vit-base-patch32", "hf") == ("openai/clip-vit-base-patch32",
                                                                            PreprocessOptions())
    head, opts = split_backbone_options("/m/dir,preprocess=targetpad,target_ratio=1.5", "hf")
    assert head == "/m/dir" and opts == PreprocessOptions("targetpad", 1.5)
    with pytest.raises(CirlabError, match="preprocess='square'"):
        split_backbone_options("x,preprocess=square", "hf")
    with pytest.raises(CirlabError, match="option 'pad=2'"):
        split_backbone_options("x,pad=2", "hf")
    with pytest.raises(CirlabError, match="target_ratio=0.5"):
        split_backbone_options("x,preprocess=targetpad,target_ratio=0.5", "hf")


def test_hf_backbone_with_targetpad(tmp_path):
    pytest.importorskip("transformers")
    from cirlab.backbones import create_backbone
    from cirlab.backbones.hf_random import make_random_hf

    d = make_random_hf(tmp_path / "clip", "clip", "tiny")
    plain = create_backbone(f"hf:{d}")
    padded = create_backbone(f"hf:{d},preprocess=targetpad")
    assert padded.spec == f"hf:{d},preprocess=targetpad" and padded.describe()["preprocess"]["mode"] == "targetpad"
    img = noise_image(37, 91, 0)
    mean, std = plain.image_processor.image_mean, plain.image_processor.image_std
    assert tuple(mean) == MEAN and tuple(std) == STD                        # the CLIP processor's statistics
    got = padded.preprocess(img)
    assert torch.allclose(got, official_targetpad(img, 1.25, 32), atol=1e-6)
    assert not torch.allclose(plain.preprocess(img), got, atol=1e-2)       # the default is the CLIP processor
    # the feature-cache key sees the option
    assert plain.preprocess_config() != padded.preprocess_config()
    tall = tmp_path / "tall.png"
    img.save(tall)
    with torch.no_grad():
        feat = padded.forward_images(got.unsqueeze(0))
    assert torch.allclose(padded.encode_images([tall]), feat, atol=1e-6)
