"""ANN indexes on structured embeddings: recall@10 against exact search, and speed-up over flat.

    python benchmarks/index_ann.py               # IVF/PQ on 1M x 512, HNSW on 100k x 512
    python benchmarks/index_ann.py --quick       # 50k x 512 (HNSW 20k), a few settings

Data: ``clustered_embeddings`` from ``index_search.py`` (a 1000-cluster Gaussian mixture near a
48-dim subspace of R^512, unit-normalised; queries are fresh draws), not uniform noise, which is the
worst case for every ANN method and says nothing about real features. Each index is built through
``cirlab.index.create_index`` (the same spec strings users write), ground truth and the flat baseline
come from faiss ``IndexFlatIP`` on the same data in the same run. Speed-up = flat seconds / ANN
seconds for the same queries. Bytes per vector = the saved faiss index file / n (codes, lists, graph).
Goal from the issue: recall@10 >= 0.95 at >= 20x flat speed on 1M x 512. PQ uses 4-bit fast-scan
codes (``PQ64x4fs``), alone and re-ranked on the full vectors (``,RFlat`` with ``k_factor_rf=8``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_search import clustered_embeddings  # noqa: E402


def recall_at(found: list[list[str]], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len({int(i) for i in f[:k]} & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def best_time(fn, rounds: int = 2) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench(x: np.ndarray, q: np.ndarray, configs: list[tuple[str, list[dict]]], k: int, label: str) -> None:
    import faiss

    from cirlab.index import create_index

    n = len(x)
    ids = [str(i) for i in range(n)]
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    t_flat, (_, truth) = best_time(lambda: flat.search(q, k))
    print(f"\n## {label}: n={n}, d={x.shape[1]}, {len(q)} queries; faiss flat {len(q) / t_flat:.0f} q/s")
    print(f"{'spec':<34} {'params':<14} {'build s':>8} {'recall@10':>9} {'q/s':>8} {'speed-up':>8} {'B/vec':>6}")
    for spec, params in configs:
        t = time.perf_counter()
        index = create_index(spec, dim=x.shape[1])
        index.add(ids, x)
        build = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            index.save(tmp)
            bpv = (Path(tmp) / "faiss.index").stat().st_size / n
        for p in params:
            index.set_search_params(**p)
            ts, (_, found) = best_time(lambda: index.search(q, k))
            ptxt = ",".join(f"{a}={b}" for a, b in p.items()) or "-"
            print(f"{spec:<34} {ptxt:<14} {build:>8.1f} {recall_at(found, truth, k):>9.3f} {len(q) / ts:>8.0f} "
                  f"{t_flat / ts:>8.1f} {bpv:>6.0f}", flush=True)
        del index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="base size for IVF/PQ (default 1000000; quick 50000)")
    ap.add_argument("--hnsw-n", type=int, default=None, help="base size for HNSW (default 100000; quick 20000)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    n = args.n or (50_000 if args.quick else 1_000_000)
    hn = args.hnsw_n or (20_000 if args.quick else 100_000)
    nlist = 256 if n <= 100_000 else 1024
    train = min(n, 32 * nlist)
    pq_train = min(n, 8192)  # this faiss wheel's small-d k-means is slow (~7 s for 5k x 8-d, 256 centroids)
    import faiss

    print(f"# ANN benchmark, cpus {os.cpu_count()}, faiss {faiss.__version__} threads {faiss.omp_get_max_threads()}")
    x, q = clustered_embeddings(max(n, hn), nq=args.queries)
    probes = [{"nprobe": p} for p in ((4, 8, 16, 32) if not args.quick else (4, 16))]
    bench(x[:n], q, [
        (f"faiss:IVF{nlist},Flat?train_size={train}", probes),
        (f"faiss:IVF{nlist},SQ8?train_size={train}", probes),
        # product quantisation: 4-bit fast-scan codes (32 B/vector) alone, and re-ranked with the full vectors
        (f"faiss:IVF{nlist},PQ64x4fs?train_size={pq_train}", probes[-2:]),
        (f"faiss:IVF{nlist},PQ64x4fs,RFlat?train_size={pq_train}", [dict(p, k_factor_rf=8) for p in probes]),
    ], args.k, "inverted lists")
    efs = [{"efSearch": e} for e in ((32, 64, 128) if not args.quick else (32, 128))]
    bench(x[:hn], q, [("faiss:HNSW32", efs)], args.k, "graph (HNSW), smaller base: its build is slow on 2 cores")


if __name__ == "__main__":
    import _machine

    sys.exit(_machine.run(main))
