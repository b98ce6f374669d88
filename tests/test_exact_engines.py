"""The ``exact`` index gives the same top-k whether torch or faiss searches it (``?engine=``), and
``engine=auto`` hands large many-query searches to faiss only where configured."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cirlab.index import create_index, load_index
from cirlab.index import exact as exact_mod

faiss = pytest.importorskip("faiss")


def _data(n: int = 3000, d: int = 48, nq: int = 120, seed: int = 0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, d)).astype(np.float32)
    q = g.standard_normal((nq, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)


def _brute(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the k best inner products, in float64 (an independent reference)."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_and_faiss_engines_return_the_same_top_k(tmp_path, mmap):
    x, q = _data()
    ids = [f"img{i}" for i in range(len(x))]
    exclude = [[ids[j] for j in _brute(x, q[i:i + 1], 2)[0]] if i % 3 == 0 else None for i in range(len(q))]
    got = {}
    for engine in ("torch", "faiss"):
        idx = create_index(f"exact?engine={engine}" + ("&mmap=1" if mmap else ""), dim=x.shape[1])
        idx.add(ids, x)
        idx.save(tmp_path / engine)
        loaded, _ = load_index(tmp_path / engine)  # (memory-mapped, read-only rows with mmap=1)
        assert loaded.mmap is mmap
        assert loaded.engine == engine and loaded.engine_for(len(q)) == engine
        got[engine] = loaded.search(q, 10, exclude=exclude)
    (s_t, i_t), (s_f, i_f) = got["torch"], got["faiss"]
    assert i_t == i_f
    np.testing.assert_allclose(s_t, s_f, atol=1e-5, rtol=0)
    # and both are the float64 brute-force answer, with the excluded ids dropped
    want = _brute(x, q, 12)
    for r in range(len(q)):
        expect = [ids[j] for j in want[r] if not exclude[r] or ids[j] not in exclude[r]][:10]
        assert i_t[r] == expect


def test_auto_engine_uses_faiss_only_for_large_many_query_fp32_searches(monkeypatch):
    x, q = _data(n=500, nq=40)
    ids = [str(i) for i in range(len(x))]
    idx, idx16 = create_index("exact", dim=x.shape[1]), create_index("exact:fp16", dim=x.shape[1])
    idx.add(ids, x)
    idx16.add(ids, x)
    assert idx.engine == "auto" and idx.engine_for(1000) == "torch" and idx.engine_for(1) == "torch"  # 500 rows
    big = exact_mod.FAISS_MIN_ROWS_MANY  # the shipped rule: few queries stay with torch however many rows
    assert exact_mod.FAISS_MAX_FEW < 1 and exact_mod.FAISS_MIN_ROWS <= big
    monkeypatch.setattr(exact_mod, "FAISS_MAX_FEW", 8)
    monkeypatch.setattr(exact_mod, "FAISS_MIN_ROWS", 400)
    monkeypatch.setattr(exact_mod, "FAISS_MIN_ROWS_MANY", 450)
    monkeypatch.setattr(exact_mod, "FAISS_MIN_QUERIES", 32)
    assert idx.engine_for(40) == "faiss" and idx.engine_for(31) == "torch"
    assert idx.engine_for(1) == "faiss" and idx.engine_for(8) == "faiss" and idx.engine_for(9) == "torch"
    assert idx16.engine_for(40) == "torch" and idx16.engine_for(1) == "torch"  # fp16 storage stays with torch
    monkeypatch.setattr(exact_mod, "FAISS_MIN_ROWS_MANY", 600)
    assert idx.engine_for(40) == "torch" and idx.engine_for(1) == "faiss"
    monkeypatch.setattr(exact_mod, "FAISS_MIN_ROWS_MANY", 450)
    calls = []
    real = exact_mod.ExactIndex._topk_faiss
    monkeypatch.setattr(exact_mod.ExactIndex, "_topk_faiss", lambda self, *a: calls.append(1) or real(self, *a))
    _, auto_ids = idx.search(q, 5)
    assert calls == [1]
    monkeypatch.setattr(exact_mod, "FAISS_MIN_ROWS", 10**9)
    _, torch_ids = idx.search(q, 5)
    assert calls == [1] and auto_ids == torch_ids
    monkeypatch.setattr(exact_mod, "_faiss", lambda: None)  # faiss missing: auto falls back to torch
    monkeypatch.setattr(exact_mod, "FAISS_MIN_ROWS", 400)
    assert idx.engine_for(40) == "torch"


def test_bad_engine_is_refused():
    with pytest.raises(ValueError, match="engine 'gpu'"):
        create_index("exact?engine=gpu", dim=8)
