"""Exact search: cirlab's ``exact`` index vs faiss ``IndexFlatIP`` on the same data, queries/s ratio.

    python benchmarks/index_search.py            # 100k x 512 and 1M x 512, 1000 queries
    python benchmarks/index_search.py --quick    # 20k x 512, 200 queries

Both run in this process with the same threads; the two are timed alternately (``--rounds``
times each) and the best round of each is compared, so load from other processes hits both alike.
Also prints bytes per vector (the saved index files divided by the count) for exact fp32/fp16 and
faiss Flat. Goal: ratio (exact q/s / faiss q/s) >= 1.0.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def clustered_embeddings(n: int, d: int = 512, nq: int = 1000, clusters: int = 1000, intrinsic: int = 48,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from a Gaussian mixture living near an ``intrinsic``-dim subspace of R^d.

    Like image embeddings: many semantic clusters of unequal size, most variance in a few tens of
    directions, a little isotropic noise. Queries are fresh draws from the same mixture (not in the base)."""
    g = np.random.default_rng(seed)
    basis = np.linalg.qr(g.standard_normal((d, intrinsic)))[0].T.astype(np.float32)  # (r, d) orthonormal rows
    centres = g.standard_normal((clusters, intrinsic)).astype(np.float32)
    weights = g.dirichlet(np.full(clusters, 0.5))
    spread = g.uniform(0.3, 0.8, size=clusters).astype(np.float32)

    def draw(m: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        for s in range(0, m, 100_000):
            b = min(100_000, m - s)
            lab = rng.choice(clusters, size=b, p=weights)
            z = centres[lab] + spread[lab, None] * rng.standard_normal((b, intrinsic), dtype=np.float32)
            x = z @ basis + 0.08 * rng.standard_normal((b, d), dtype=np.float32)
            out[s:s + b] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n, g), draw(nq, np.random.default_rng(seed + 1))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def time_best(fn, rounds: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run(n: int, nq: int, k: int, rounds: int) -> dict:
    import faiss

    from cirlab.index import create_index

    x, q = clustered_embeddings(n, nq=nq)
    ids = [f"{i}" for i in range(n)]
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    ours = create_index("exact", dim=x.shape[1])
    ours.add(ids, x)
    ours16 = create_index("exact:fp16", dim=x.shape[1])
    ours16.add(ids, x)
    t_f, t_e, t_h = float("inf"), float("inf"), float("inf")
    for _ in range(rounds):  # alternate, keep the best of each
        tf, (_, fi) = time_best(lambda: flat.search(q, k), 1)
        te, (_, ei) = time_best(lambda: ours.search(q, k), 1)
        th, _ = time_best(lambda: ours16.search(q, k), 1)
        t_f, t_e, t_h = min(t_f, tf), min(t_e, te), min(t_h, th)
    agree = np.mean([len(set(map(str, a)) & set(b)) / k for a, b in zip(fi, ei)])
    with tempfile.TemporaryDirectory() as tmp:
        ours.save(Path(tmp) / "e")
        ours16.save(Path(tmp) / "h")
        faiss.write_index(flat, str(Path(tmp) / "flat.index"))
        mem = {"exact": (Path(tmp) / "e" / "features.safetensors").stat().st_size / n,
               "exact:fp16": (Path(tmp) / "h" / "features.safetensors").stat().st_size / n,
               "faiss Flat": (Path(tmp) / "flat.index").stat().st_size / n}
    return {"n": n, "nq": nq, "faiss_qps": nq / t_f, "exact_qps": nq / t_e, "fp16_qps": nq / t_h,
            "ratio": t_f / t_e, "ratio_fp16": t_f / t_h, "agree": agree, "mem": mem}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (20k vectors, 200 queries)")
    ap.add_argument("--sizes", default=None, help="comma-separated base sizes (default 100000,1000000)")
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("20000" if args.quick else "100000,1000000")).split(",")]
    nq = args.queries or (200 if args.quick else 1000)
    import faiss

    print(f"# exact search, d=512, k={args.k}, {nq} queries, torch threads {torch.get_num_threads()}, "
          f"faiss threads {faiss.omp_get_max_threads()}, cpus {os.cpu_count()}")
    print(f"{'n':>9} {'faiss q/s':>10} {'exact q/s':>10} {'ratio':>6} {'fp16 q/s':>9} {'ratio':>6} {'top-k agree':>11}")
    mems = {}
    for n in sizes:
        r = run(n, nq, args.k, args.rounds)
        mems = r["mem"]
        print(f"{n:>9} {r['faiss_qps']:>10.0f} {r['exact_qps']:>10.0f} {r['ratio']:>6.2f} {r['fp16_qps']:>9.0f} "
              f"{r['ratio_fp16']:>6.2f} {r['agree']:>11.4f}", flush=True)
    print("# bytes per vector (saved files / n): " + ", ".join(f"{k} {v:.0f}" for k, v in mems.items()))


if __name__ == "__main__":
    main()
