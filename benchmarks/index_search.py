"""Exact search at the machine's limit: cirlab ``exact`` vs faiss ``IndexFlatIP``, beside the sgemm peak.

    python benchmarks/index_search.py            # n = 20k, 100k, 1M; d = 512, 768; 1, 32, 1000 queries per call
    python benchmarks/index_search.py --quick    # n = 20k, 100k; d = 512 (about a minute)

For every shape the same data is searched, alternately (``--rounds`` times, best round of each kept, so
load from other processes hits all alike), by faiss ``IndexFlatIP``, ``exact`` (engine auto: what users
get), ``exact?engine=torch`` (the torch path alone) and ``exact:fp16`` (half-precision storage, torch).
Printed per shape: queries/s of each, the ratio exact / faiss (goal >= 0.95) and the fraction of the
sgemm peak the auto path reaches (2 n d flops per query; the peak is torch's float32 matmul on a
1024 x d x 8192 product, measured in this run before and after). Also bytes per vector of the saved files.
"""
from __future__ import annotations

import argparse
import os
import sys
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


def sgemm_peak(d: int, rounds: int = 5) -> float:
    """GFLOP/s of torch's float32 matmul at a search-like shape (1024 queries x d x 8192 rows), best round."""
    a, b = torch.randn(1024, d), torch.randn(8192, d)
    out = torch.empty(1024, 8192)
    torch.matmul(a, b.T, out=out)
    t, _ = time_best(lambda: torch.matmul(a, b.T, out=out), rounds)
    return 2 * 1024 * d * 8192 / t / 1e9


def search_rate(fn, q: np.ndarray, per_call: int) -> float:
    """Queries/s of ``fn`` answering ``q`` in calls of ``per_call`` queries (at least 64 queries in all)."""
    calls = max(1, min(len(q), 64) // per_call)
    t = time.perf_counter()
    for c in range(calls):
        fn(q[c * per_call:(c + 1) * per_call])
    return calls * per_call / (time.perf_counter() - t)


def run_shape(n: int, d: int, per_call: list[int], k: int, rounds: int, peak: float) -> list[dict]:
    import faiss

    from cirlab.index import create_index

    x, q = clustered_embeddings(n, d=d, nq=max(per_call))
    ids = [f"{i}" for i in range(n)]
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    ours = {spec: create_index(spec, dim=d) for spec in ("exact", "exact?engine=torch", "exact:fp16")}
    for idx in ours.values():
        idx.add(ids, x)
    rows = []
    for m in per_call:
        qm = q[:max(m, 64)] if m < 64 else q[:m]
        best = {name: 0.0 for name in ["faiss", *ours]}
        for _ in range(rounds):  # alternate, keep the best of each
            best["faiss"] = max(best["faiss"], search_rate(lambda b: flat.search(b, k), qm, m))
            for spec, idx in ours.items():
                best[spec] = max(best[spec], search_rate(lambda b: idx.search(b, k), qm, m))
        _, fi = flat.search(q[:m], k)
        _, ei = ours["exact"].search(q[:m], k)
        agree = float(np.mean([len(set(map(str, a)) & set(b)) / k for a, b in zip(fi, ei)]))
        gflops = best["exact"] * 2 * n * d / 1e9
        rows.append({"n": n, "d": d, "per_call": m, **best, "ratio": best["exact"] / best["faiss"],
                     "ratio_torch": best["exact?engine=torch"] / best["faiss"],
                     "ratio_fp16": best["exact:fp16"] / best["faiss"], "peak_frac": gflops / peak,
                     "engine": ours["exact"].engine_for(m), "agree": agree})
    return rows


def bytes_per_vector(n: int = 20000, d: int = 512) -> dict[str, float]:
    import faiss

    from cirlab.index import create_index

    x, _ = clustered_embeddings(n, d=d, nq=1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ("exact", "exact:fp16"):
            idx = create_index(spec, dim=d)
            idx.add([str(i) for i in range(n)], x)
            idx.save(Path(tmp) / spec)
            out[spec] = (Path(tmp) / spec / "features.safetensors").stat().st_size / n
        flat = faiss.IndexFlatIP(d)
        flat.add(x)
        faiss.write_index(flat, str(Path(tmp) / "flat.index"))
        out["faiss Flat"] = (Path(tmp) / "flat.index").stat().st_size / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n = 20k and 100k, d = 512 only")
    ap.add_argument("--sizes", default=None, help="comma-separated gallery sizes (default 20000,100000,1000000)")
    ap.add_argument("--dims", default=None, help="comma-separated dimensions (default 512,768)")
    ap.add_argument("--per-call", default="1,32,1000", help="queries per search call")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; quick 2)")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("20000,100000" if args.quick else "20000,100000,1000000")).split(",")]
    dims = [int(s) for s in (args.dims or ("512" if args.quick else "512,768")).split(",")]
    per_call = [int(s) for s in args.per_call.split(",")]
    rounds = args.rounds or (2 if args.quick else 3)
    import faiss

    print(f"# exact search, k={args.k}; torch threads {torch.get_num_threads()}, faiss threads "
          f"{faiss.omp_get_max_threads()}, cpus {os.cpu_count()}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print("| n | d | queries/call | faiss q/s | exact q/s (engine) | ratio | torch path ratio | exact:fp16 ratio "
          "| exact % of sgemm peak | top-k agreement |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in dims:
        peak = sgemm_peak(d)
        print(f"| sgemm peak, d={d} | | | | {peak:.0f} GFLOP/s | | | | | |", flush=True)
        for n in sizes:
            for r in run_shape(n, d, per_call, args.k, rounds, peak):
                print(f"| {n:,} | {d} | {r['per_call']} | {r['faiss']:,.0f} | {r['exact']:,.0f} ({r['engine']}) | "
                      f"{r['ratio']:.2f} | {r['ratio_torch']:.2f} | {r['ratio_fp16']:.2f} | "
                      f"{100 * r['peak_frac']:.0f}% | {r['agree']:.4f} |", flush=True)
        print(f"| sgemm peak again, d={d} | | | | {sgemm_peak(d):.0f} GFLOP/s | | | | | |", flush=True)
    print("# bytes per vector (saved files / n): " + ", ".join(f"{k} {v:.0f}" for k, v in bytes_per_vector().items()))


if __name__ == "__main__":
    import _machine

    sys.exit(_machine.run(main))
