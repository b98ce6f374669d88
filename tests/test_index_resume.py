"""Killing `cirlab index` with SIGKILL mid-run and re-running it: every image indexed once, no chunk (nor any
batch the killed run committed to the feature cache) redone; another index of the same gallery encodes nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlite3

import numpy as np
import pytest
import torch

from cirlab.index import load_index
from cirlab.index.base import MANIFEST
from cirlab.index.build import CHUNKS, chunk_bounds, chunk_path, read_chunk

# Runs the real `cirlab` CLI in a subprocess; the only change is a spy on the model's forward pass that logs
# how many images each batch runs through the model (and sleeps so the test can kill the run mid-way).
DRIVER = r'''
import sys, time
from cirlab.backbones.tiny import TinyBackbone
log_path, slow, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
real = TinyBackbone.forward_images
def spy(self, pixels, normalize=True):
    out = real(self, pixels, normalize)
    time.sleep(slow)
    with open(log_path, "a") as f:
        f.write(f"{len(pixels)}\n")
    return out
TinyBackbone.forward_images = spy
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


def _cached_rows() -> int:
    """Features the shared cache holds (one model in this test)."""
    with sqlite3.connect(os.environ["CIRLAB_FEATURE_CACHE"]) as db:
        return db.execute("SELECT COUNT(*) FROM features").fetchone()[0]


def test_sigkill_mid_index_then_resume(small_world, saved_backbone, tmp_path, monkeypatch):
    from cirlab.backbones import create_backbone
    from cirlab.backbones.tiny import TinyBackbone
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
    # every batch the killed run committed is in the feature cache: the finished chunks and maybe part of the next
    cached = _cached_rows()
    assert done_rows <= cached < n
    run1 = sum(int(x) for x in log1.read_text().split())
    assert cached <= run1 + 4  # (a batch is logged after the model ran, committed after that)

    # re-run the same command (in this process, with a counting spy on the model's forward pass)
    encoded: list[int] = []
    real = TinyBackbone.forward_images

    def spy(self, pixels, normalize=True):
        encoded.append(len(pixels))
        return real(self, pixels, normalize)

    monkeypatch.setattr(TinyBackbone, "forward_images", spy)
    argv = ["index", str(small_world / "test"), "--out", str(out), "--backbone", f"tiny:{saved_backbone}",
            "--index-spec", "exact", "--chunk-size", str(CHUNK), "--batch-size", "4"]
    assert main(argv) == 0
    assert sum(encoded) == n - cached  # finished chunks and committed batches were not encoded again ...
    assert run1 + sum(encoded) <= n + 4  # ... at most the one batch in flight at the kill ran twice
    index, manifest = load_index(out)
    assert index.ids == gallery.ids and len(set(index.ids)) == n == manifest["count"]  # ... every image once
    assert not cdir.exists()  # chunks are cleared once the index is saved
    # the resumed features equal a from-scratch single-process encoding
    want = create_backbone(f"tiny:{saved_backbone}").encode_images(gallery.paths)
    torch.testing.assert_close(index.vectors(gallery.ids), want, atol=1e-5, rtol=0)
    s, ids = index.search(want[:5], 3)
    assert [row[0] for row in ids] == gallery.ids[:5] and np.allclose(s[:, 0], 1.0, atol=1e-4)
    # a third run of an up-to-date index encodes nothing; another index kind (chunks are gone) takes every
    # feature from the cache, and so does another directory
    encoded.clear()
    assert main(argv) == 0 and sum(encoded) == 0
    assert main(argv[:-5] + ["faiss:Flat", "--chunk-size", str(CHUNK), "--batch-size", "4"]) == 0
    assert sum(encoded) == 0 and load_index(out)[1]["index"] == "faiss:Flat"
    other = argv[:3] + [str(tmp_path / "index2")] + argv[4:]
    assert main(other) == 0 and sum(encoded) == 0
    torch.testing.assert_close(load_index(tmp_path / "index2")[0].vectors(gallery.ids), want, atol=1e-5, rtol=0)
    # with the cache turned off, the gallery is encoded once more, exactly once
    assert main(argv[:3] + [str(tmp_path / "index3")] + argv[4:] + ["--feature-cache", "off"]) == 0
    assert sum(encoded) == n
