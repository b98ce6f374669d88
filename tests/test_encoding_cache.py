"""Fast cached encoding: same features as the plain path, no work for an unchanged gallery,
re-encoding of exactly what changed, resumption after an interruption."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cirlab.backbones import encoding
from cirlab.backbones.encoding import FeatureCache, encode_images, pick_device, preprocess_fingerprint, weights_fingerprint
from cirlab.data import load_dataset


@pytest.fixture()
def gallery(small_world, tmp_path):
    """A private copy of 40 gallery images (tests modify files)."""
    g = load_dataset(small_world / "test").gallery
    out = tmp_path / "imgs"
    out.mkdir()
    paths = []
    for p in g.paths[:40]:
        shutil.copy(p, out / os.path.basename(p))
        paths.append(str(out / os.path.basename(p)))
    return paths


class Counter:
    """Counts the images that reach the model's forward pass."""

    def __init__(self, bb, fail_after: int | None = None):
        self.n, self.calls, self.fail_after = 0, 0, fail_after
        self.real = bb.forward_images
        bb.forward_images = self

    def __call__(self, pixels, normalize=True):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.n += len(pixels)
        return self.real(pixels, normalize=normalize)


@pytest.mark.parametrize("workers", [0, 1])
def test_same_features_as_the_plain_path(tiny_backbone, gallery, tmp_path, workers):
    want = tiny_backbone.encode_images(gallery, batch_size=7)
    got = encode_images(tiny_backbone, gallery, batch_size=8, num_workers=workers,
                        cache=FeatureCache(tmp_path / "c.sqlite"), progress=False)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    got_uncached = encode_images(tiny_backbone, gallery, batch_size=16, num_workers=workers, cache=False,
                                 progress=False)
    torch.testing.assert_close(got_uncached, want, atol=1e-6, rtol=0)


def test_unchanged_gallery_costs_nothing_and_a_changed_image_is_reencoded(tiny_backbone, gallery, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "c.sqlite")
    count = Counter(tiny_backbone)
    first = encode_images(tiny_backbone, gallery, batch_size=8, cache=cache, progress=False)
    assert count.n == len(gallery)

    hashed = []
    real_hash = encoding.image_bytes_hash
    monkeypatch.setattr(encoding, "image_bytes_hash", lambda item: hashed.append(item) or real_hash(item))
    again = encode_images(tiny_backbone, gallery, batch_size=8, cache=cache, progress=False)
    assert count.n == len(gallery) and hashed == []            # no model work, not even a re-read of the files
    assert torch.equal(again, first)

    # change one image's pixels; touch another without changing it
    with Image.open(gallery[5]) as im:
        arr = np.asarray(im.convert("RGB")).copy()
    arr[:8, :8] = 255 - arr[:8, :8]
    Image.fromarray(arr).save(gallery[5])
    os.utime(gallery[9], ns=(1, 1))
    third = encode_images(tiny_backbone, gallery, batch_size=8, cache=cache, progress=False)
    assert count.n == len(gallery) + 1                        # only the changed image went through the model
    assert sorted(hashed) == sorted([os.path.abspath(gallery[5]), os.path.abspath(gallery[9])])
    assert not torch.allclose(third[5], first[5])
    torch.testing.assert_close(third[5], tiny_backbone.encode_images([gallery[5]])[0], atol=1e-6, rtol=0)
    keep = [i for i in range(len(gallery)) if i != 5]
    assert torch.equal(third[keep], first[keep])


def test_new_weights_or_preprocessing_are_new_keys(tiny_backbone, gallery, tmp_path):
    cache = FeatureCache(tmp_path / "c.sqlite")
    count = Counter(tiny_backbone)
    encode_images(tiny_backbone, gallery[:10], cache=cache, progress=False)
    fp, pp = weights_fingerprint(tiny_backbone), preprocess_fingerprint(tiny_backbone)
    with torch.no_grad():                                     # an optimiser-style in-place update
        tiny_backbone.visual.proj.weight.mul_(1.01)
    assert weights_fingerprint(tiny_backbone) != fp
    encode_images(tiny_backbone, gallery[:10], cache=cache, progress=False)
    assert count.n == 20
    tiny_backbone.std.fill_(0.3)                              # preprocessing only (a non-persistent buffer)
    assert weights_fingerprint(tiny_backbone) == tiny_backbone.fingerprint()
    assert preprocess_fingerprint(tiny_backbone) != pp
    encode_images(tiny_backbone, gallery[:10], cache=cache, progress=False)
    assert count.n == 30


def test_interrupted_encoding_resumes_and_duplicates_are_encoded_once(tiny_backbone, gallery, tmp_path):
    cache = FeatureCache(tmp_path / "c.sqlite")
    count = Counter(tiny_backbone, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        encode_images(tiny_backbone, gallery, batch_size=8, cache=cache, progress=False)
    assert count.n == 24
    count.fail_after = None
    items = gallery + gallery[:5]                             # five repeats
    out = encode_images(tiny_backbone, items, batch_size=8, cache=cache, progress=False)
    assert count.n == len(gallery)                           # the 16 left, each once
    torch.testing.assert_close(out, tiny_backbone.encode_images(items), atol=1e-6, rtol=0)


def test_pil_images_are_keyed_by_pixels(tiny_backbone, tmp_path):
    cache = FeatureCache(tmp_path / "c.sqlite")
    a = Image.new("RGB", (20, 30), (200, 10, 10))
    b = Image.new("RGB", (20, 30), (10, 200, 10))
    count = Counter(tiny_backbone)
    encode_images(tiny_backbone, [a, b], cache=cache, progress=False)
    encode_images(tiny_backbone, [a.copy(), b, Image.new("RGB", (20, 30), (10, 10, 200))], cache=cache, progress=False)
    assert count.n == 3


def test_device_selection():
    want = "cuda" if torch.cuda.is_available() else (
        "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    assert pick_device().type == want == pick_device("auto").type
    assert pick_device("cpu").type == "cpu"
    assert encoding.autocast_dtype(torch.device("cpu")) is None


def test_worker_count_is_picked_from_the_device_and_cores(monkeypatch):
    from cirlab.backbones.encoding import default_workers

    monkeypatch.setattr(encoding.os, "cpu_count", lambda: 2)
    assert default_workers(1000, 64, "cpu") == 0  # the model's threads fill both cores: decode between batches
    assert default_workers(1000, 64, "cuda") == 1  # the GPU runs the model: one core decodes
    monkeypatch.setattr(encoding.os, "cpu_count", lambda: 8)
    assert default_workers(1000, 64, "cpu") == 4 and default_workers(100, 64, "cpu") == 0


def test_draft_decoding_of_large_jpegs(tiny_backbone, tmp_path, monkeypatch):
    """draft=True decodes a JPEG far larger than the model input at a reduced scale (never below
    DRAFT_FACTOR x the input pixels), gives nearly the same features, and is cached under its own key."""
    from cirlab import imaging
    from cirlab.backbones.encoding import DRAFT_FACTOR, draft_bounds, input_pixels

    side = tiny_backbone.preprocess(Image.new("RGB", (50, 40))).shape[-1]
    assert input_pixels(tiny_backbone) == side * side and draft_bounds(tiny_backbone).draft_pixels == 4 * side * side
    g = np.random.default_rng(0)
    paths = []
    for i in range(3):  # smooth content (as photos are), 16x the input side
        y, x = np.mgrid[0:16 * side, 0:16 * side] / (16 * side)
        img = np.stack([np.sin(7 * x + i), np.cos(5 * y - i), np.sin(3 * (x + y))], -1) * 110 + 128
        p = tmp_path / f"big{i}.jpg"
        Image.fromarray((img + g.normal(0, 3, img.shape)).clip(0, 255).astype(np.uint8)).save(p, quality=92)
        paths.append(str(p))
    decoded = []
    real_open = imaging.open_image

    def spy(*a, **kw):
        im = real_open(*a, **kw)
        decoded.append(im.size)
        return im

    monkeypatch.setattr("cirlab.backbones.base.open_image", spy)
    cache = FeatureCache(tmp_path / "c.sqlite")
    full = encode_images(tiny_backbone, paths, batch_size=2, num_workers=0, cache=cache, progress=False)
    assert decoded == [(16 * side, 16 * side)] * 3
    decoded.clear()
    count = Counter(tiny_backbone)
    draft = encode_images(tiny_backbone, paths, batch_size=2, num_workers=0, cache=cache, progress=False, draft=True)
    assert count.n == 3  # not served from the full-decode features
    # JPEG scales by 1/2, 1/4 or 1/8: the smallest that keeps >= DRAFT_FACTOR (4) x the input pixels is 1/8
    assert DRAFT_FACTOR == 4 and decoded == [(2 * side, 2 * side)] * 3
    cos = (full * draft).sum(1)
    assert bool((cos > 0.99).all()) and not torch.equal(full, draft)
    again = encode_images(tiny_backbone, paths, batch_size=2, num_workers=0, cache=cache, progress=False, draft=True)
    assert count.n == 3 and torch.equal(again, draft)


def test_without_worker_processes_every_core_decodes_in_order(tiny_backbone, gallery, monkeypatch):
    """No worker process: a batch is decoded by one thread per core; the batches are the plain loader's, in order."""
    import threading

    from torch.utils.data import DataLoader

    from cirlab.backbones.encoding import _Images, image_loader

    monkeypatch.setattr(encoding.os, "cpu_count", lambda: 2)
    seen: set[str] = set()
    real = tiny_backbone.preprocess

    def preprocess(img):
        seen.add(threading.current_thread().name)
        return real(img)

    monkeypatch.setattr(tiny_backbone, "preprocess", preprocess)
    loader = image_loader(tiny_backbone, gallery, batch_size=5, num_workers=0)
    got = list(loader)
    want = list(DataLoader(_Images(gallery, real), batch_size=5, shuffle=False, num_workers=0))
    assert len(got) == len(want) == len(loader) and all(torch.equal(a, b) for a, b in zip(got, want))
    assert seen and all(name.startswith("cirlab-decode") for name in seen)  # never on the caller's thread
    monkeypatch.setattr(encoding.os, "cpu_count", lambda: 1)
    assert isinstance(image_loader(tiny_backbone, gallery, batch_size=5, num_workers=0), DataLoader)
