"""The exact index against a brute-force numpy reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cirlab.errors import IndexMismatchError
from cirlab.index import create_index, load_index


def _data(n=500, d=16, q=20, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qs = g.normal(size=(q, d)).astype(np.float32)
    return [f"id{i}" for i in range(n)], x, qs


@pytest.mark.parametrize("chunk", [7, 64, 10_000])
def test_topk_matches_bruteforce(chunk):
    ids, x, q = _data()
    index = create_index("exact", dim=16, chunk=chunk)
    index.add(ids[:200], x[:200])
    index.add(ids[200:], x[200:])
    scores, got = index.search(q, 10)
    s = q @ x.T
    ref = np.argsort(-s, axis=1, kind="stable")[:, :10]
    assert got == [[ids[j] for j in row] for row in ref]
    np.testing.assert_allclose(scores, np.take_along_axis(s, ref, 1), rtol=1e-5, atol=1e-5)


def test_exclusion_and_remove_and_roundtrip(tmp_path):
    ids, x, q = _data(n=50)
    index = create_index("exact", dim=16, chunk=16)
    index.add(ids, x)
    _, top = index.search(q[:1], 3)
    _, excl = index.search(q[:1], 3, exclude=[[top[0][0]]])
    assert excl[0] == top[0][1:] + [excl[0][2]] and top[0][0] not in excl[0]
    assert index.remove([top[0][0], "not-there"]) == 1 and len(index) == 49
    _, after = index.search(q[:1], 2)
    assert after[0] == top[0][1:3]
    index.save(tmp_path / "idx", {"backbone": "tiny:x"})
    loaded, manifest = load_index(tmp_path / "idx", "tiny:x", 16)
    assert manifest["count"] == 49 and loaded.ids == index.ids
    (s_loaded, i_loaded), (s_mem, i_mem) = loaded.search(q, 5), index.search(q, 5)
    # the loaded index blocks the gallery by its default chunk, not 16: the same ranking, scores to float rounding
    assert i_loaded == i_mem
    np.testing.assert_allclose(s_loaded, s_mem, rtol=0, atol=1e-6)
    with pytest.raises(IndexMismatchError, match="built with backbone 'tiny:x'"):
        load_index(tmp_path / "idx", "tiny:other")
    with pytest.raises(IndexMismatchError, match="dim 16"):
        load_index(tmp_path / "idx", None, 32)


def test_fp16_storage_close_to_fp32():
    ids, x, q = _data()
    a, b = create_index("exact", dim=16), create_index("exact:fp16", dim=16)
    a.add(ids, x)
    b.add(ids, x)
    assert b.all_vectors().dtype == torch.float16
    sa, _ = a.search(q, 5)
    sb, _ = b.search(q, 5)
    np.testing.assert_allclose(sa, sb, atol=2e-3)


def test_bad_input_errors():
    index = create_index("exact", dim=4)
    with pytest.raises(IndexMismatchError, match="dim 4"):
        index.add(["a"], np.zeros((1, 3), np.float32))
    index.add(["a"], np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="already in the index"):
        index.add(["a"], np.ones((1, 4), np.float32))
    with pytest.raises(KeyError, match="unknown index 'nope'"):
        create_index("nope", dim=4)
