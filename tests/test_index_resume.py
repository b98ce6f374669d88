"""Killing `cirlab index` with SIGKILL mid-run and re-running it: every image indexed once, no chunk redone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cirlab.index import load_index
from cirlab.index.base import MANIFEST
from cirlab.index.build import CHUNKS, chunk_bounds, chunk_path, read_chunk

# Runs the real `cirlab` CLI in a subprocess; the only change is a spy on Backbone.encode_images that logs
# how many images each call encodes (and, with --slow, sleeps so the test can kill the run mid-way).
DRIVER = r'''
import sys, time
from cirlab.backbones.base import Backbone
log_path, slow, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
real = Backbone.encode_images
def spy(self, images, *a, **kw):
    out = real(self, images, *a, **kw)
    time.sleep(slow)
    with open(log_path, "a") as f:
        f.write(f"{len(images)}\n")
    return out
Backbone.encode_images = spy
from cirlab.cli import main
sys.exit(main(argv))
'''
CHUNK = 8


@pytest.fixture(scope="module")
def saved_backbone(tmp_path_factory, tiny_config):
    from cirlab.backbones import create_backbone

    d = tmp_path_factory.mktemp("bb")
    create_backbone("tiny:random", config=tiny_config).save(d)
    return d


def _run(tmp_path, log, slow, gallery, out, spec, backbone_dir, wait=True):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, str(driver), str(log), str(slow), "index", str(gallery), "--out", str(out),
           "--backbone", f"tiny:{backbone_dir}", "--index-spec", spec, "--chunk-size", str(CHUNK),
           "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _finished(cdir: Path, n: int) -> list[int]:
    return [c for c, (lo, hi) in enumerate(chunk_bounds(n, CHUNK)) if read_chunk(chunk_path(cdir, c), hi - lo) is not None]


def test_sigkill_mid_index_then_resume(small_world, saved_backbone, tmp_path, monkeypatch):
    from cirlab.backbones import create_backbone
    from cirlab.backbones.base import Backbone
    from cirlab.cli import main
    from cirlab.data import load_dataset

    gallery = load_dataset(small_world / "test").gallery
    n = len(gallery)
    assert n > 4 * CHUNK
    out, log1 = tmp_path / "index", tmp_path / "run1.log"
    cdir = out / CHUNKS
    proc = _run(tmp_path, log1, 0.25, small_world / "test", out, "exact", saved_backbone, wait=False)
    deadline = time.time() + 120
    while len(_finished(cdir, n)) < 3:
        assert proc.poll() is None, "the build finished before it could be interrupted"
        assert time.time() < deadline, "no chunk was written within 120 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # killed mid-run: no manifest, so nothing can load a half-built index
    assert not (out / MANIFEST).exists()
    with pytest.raises(Exception, match="no index here"):
        load_index(out)
    done = _finished(cdir, n)
    assert 3 <= len(done) < len(chunk_bounds(n, CHUNK))
    done_rows = sum(hi - lo for c, (lo, hi) in enumerate(chunk_bounds(n, CHUNK)) if c in done)

    # re-run the same command (in this process, with a counting spy on the real encoder)
    encoded: list[int] = []
    real = Backbone.encode_images

    def spy(self, images, *a, **kw):
        encoded.append(len(images))
        return real(self, images, *a, **kw)

    monkeypatch.setattr(Backbone, "encode_images", spy)
    argv = ["index", str(small_world / "test"), "--out", str(out), "--backbone", f"tiny:{saved_backbone}",
            "--index-spec", "exact", "--chunk-size", str(CHUNK), "--batch-size", "4"]
    assert main(argv) == 0
    assert sum(encoded) == n - done_rows  # finished chunks were not encoded again ...
    index, manifest = load_index(out)
    assert index.ids == gallery.ids and len(set(index.ids)) == n == manifest["count"]  # ... every image once
    assert not cdir.exists()  # chunks are cleared once the index is saved
    # the resumed features equal a from-scratch single-process encoding
    want = real(create_backbone(f"tiny:{saved_backbone}"), gallery.paths)
    torch.testing.assert_close(index.vectors(gallery.ids), want, atol=1e-5, rtol=0)
    s, ids = index.search(want[:5], 3)
    assert [row[0] for row in ids] == gallery.ids[:5] and np.allclose(s[:, 0], 1.0, atol=1e-4)
    # a third run of an up-to-date index encodes nothing; switching to faiss re-encodes nothing either?
    # (no: chunks were cleared, so a new index type encodes the gallery once more, and only once)
    encoded.clear()
    assert main(argv) == 0 and sum(encoded) == 0
    assert main(argv[:-5] + ["faiss:Flat", "--chunk-size", str(CHUNK), "--batch-size", "4"]) == 0
    assert sum(encoded) == n and load_index(out)[1]["index"] == "faiss:Flat"
