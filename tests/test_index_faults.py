"""Fault injection for index builds: SIGKILL at random points, flipped bytes in every stored file (and in
an interrupted build's chunks), concurrent builders. Invariant: the index directory is either complete
and verified (and equal to a clean build) or refused with a named error; never a silently wrong index."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cirlab.errors import IndexMismatchError
from cirlab.index import load_index
from cirlab.index.base import MANIFEST
from cirlab.index.build import CHUNKS
from cirlab.index.integrity import verify_index

N_IMAGES, CHUNK = 24, 4
# The real CLI in a subprocess, slowed down where it matters so random kill times land everywhere:
# each encoded batch and each sealed file (the window between the data files and the manifest) sleep.
DRIVER = r'''
import sys, time
import cirlab.backbones.base as base
import cirlab.fileutil as fileutil
real_encode, real_seal = base.Backbone.encode_images, fileutil.seal_file
def encode(self, *a, **kw):
    time.sleep(0.04)
    return real_encode(self, *a, **kw)
def seal(*a, **kw):
    time.sleep(0.15)
    return real_seal(*a, **kw)
base.Backbone.encode_images = encode
fileutil.seal_file = seal
from cirlab.cli import main
print("started", flush=True)
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_config):
    from cirlab.backbones import create_backbone
    from cirlab.cli import main

    root = tmp_path_factory.mktemp("faults")
    bb = root / "bb"
    create_backbone("tiny:random", config=tiny_config).save(bb)
    g = root / "gallery"
    g.mkdir()
    rng = np.random.default_rng(0)
    for n in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(g / f"im{n:02d}.png")
    (root / "driver.py").write_text(DRIVER)
    ref = root / "reference"
    assert main(["index", str(g), "--out", str(ref), "--backbone", f"tiny:{bb}", "--chunk-size", str(CHUNK),
                 "--batch-size", "2", "--feature-cache", "off"]) == 0
    index, _ = load_index(ref)
    return root, index.ids, index.all_vectors().clone()


def _argv(root: Path, out: Path, cache: str = "off") -> list[str]:
    return [sys.executable, str(root / "driver.py"), "index", str(root / "gallery"), "--out", str(out),
            "--backbone", f"tiny:{root / 'bb'}", "--chunk-size", str(CHUNK), "--batch-size", "2",
            "--feature-cache", cache]


def _state(out: Path, ids: list[str], x: torch.Tensor) -> str:
    """'none' (no manifest: no index, and loading says so) or 'complete' (verified and equal to the clean
    build); anything else fails the test."""
    if not (out / MANIFEST).is_file():
        with pytest.raises(IndexMismatchError, match="no index here"):
            load_index(out)
        return "none"
    n, problems = verify_index(out)
    assert not problems and n == len(ids), problems
    index, _ = load_index(out)
    assert index.ids == ids
    torch.testing.assert_close(index.all_vectors(), x, rtol=0, atol=0)
    return "complete"


def test_sigkill_at_random_points_leaves_no_index_or_a_verified_one(setup, tmp_path):
    root, ids, x = setup
    out = tmp_path / "idx"
    rng = random.Random(14)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # how long the build part of a run takes here (after imports), to spread the kill times over it
    t0 = time.time()
    p = subprocess.Popen(_argv(root, tmp_path / "timing"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, env=env)
    assert p.stdout.readline().strip() == "started"
    t1 = time.time()
    assert p.wait(timeout=300) == 0
    span = time.time() - t1
    assert span > 0.5, f"the build took {span:.2f}s (imports {t1 - t0:.1f}s): too fast to interrupt"
    seen = []
    for delay in sorted(rng.uniform(0, 1.1 * span) for _ in range(5)):
        p = subprocess.Popen(_argv(root, out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=env)
        assert p.stdout.readline().strip() == "started"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        seen.append(_state(out, ids, x))
        if seen[-1] == "complete":
            break
        if rng.random() < 0.5 and (out / CHUNKS).is_dir():  # and damage a finished chunk now and then
            chunks = sorted((out / CHUNKS).glob("chunk-*.safetensors"))
            if chunks:
                c = chunks[rng.randrange(len(chunks))]
                raw = bytearray(c.read_bytes())
                raw[rng.randrange(len(raw))] ^= 0xFF
                c.write_bytes(bytes(raw))
    assert "none" in seen, seen  # at least one kill landed before the manifest
    # the next run finishes (resuming from the intact chunks, re-encoding damaged ones) and is verified
    r = subprocess.run(_argv(root, out), capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert _state(out, ids, x) == "complete"
    assert not (out / CHUNKS).exists()


def test_flipped_bytes_in_any_stored_file_are_refused_or_harmless(setup, tmp_path):
    """Every file of a finished index, a byte flipped at a random place, many times: the load either
    refuses naming the damage or returns exactly the clean index."""
    from cirlab.cli import main

    root, ids, x = setup
    out = tmp_path / "idx"
    assert main(["index", str(root / "gallery"), "--out", str(out), "--backbone", f"tiny:{root / 'bb'}",
                 "--chunk-size", str(CHUNK), "--batch-size", "2", "--feature-cache", "off"]) == 0
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != ".cirlab.lock")
    sealed = set(json.loads((out / MANIFEST).read_text())["files"])
    rng = random.Random(7)
    refused = 0
    cases = 0
    for f in files:
        pristine = f.read_bytes()
        for _ in range(12):
            cases += 1
            raw = bytearray(pristine)
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            f.write_bytes(bytes(raw))
            try:
                index, _ = load_index(out)
            except IndexMismatchError as e:
                refused += 1
                assert str(out) in str(e)
            else:
                assert f.name not in sealed, f"a flipped byte in {f.name} was not detected"
                assert index.ids == ids
                torch.testing.assert_close(index.all_vectors(), x, rtol=0, atol=0)
            f.write_bytes(pristine)
    assert refused >= 12 * len(sealed) and cases == 12 * len(files)
    assert _state(out, ids, x) == "complete"


def test_concurrent_builders_one_builds_the_others_wait_out_or_are_refused(setup, tmp_path):
    root, ids, x = setup
    out = tmp_path / "idx"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(_argv(root, out, cache=str(tmp_path / "features.sqlite")), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = [c for c, _ in results]
    assert codes.count(0) >= 1 and set(codes) <= {0, 2}, results
    for code, err in results:
        if code == 2:
            assert "is being indexed by another process (PID" in err, err
    assert _state(out, ids, x) == "complete"
