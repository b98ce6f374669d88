"""Milvus Lite through cirlab's ``milvus:`` index: insert and query throughput, bytes per vector.

    python benchmarks/milvus_throughput.py           # 50k x 512
    python benchmarks/milvus_throughput.py --quick   # 5k x 512

Inserts ``n`` structured embeddings (``clustered_embeddings`` from ``index_search.py``) in batches of
``--batch`` into a fresh Milvus Lite database, then times queries one at a time (interactive use) and
in batches of 100 (evaluation), for the FLAT (exact) and HNSW index types; recall@10 is measured
against cirlab's ``exact`` index on the same data, and the exact index's query rate is printed for
scale. Bytes per vector = the database directory after ``save`` (flush) / n.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_search import clustered_embeddings, dir_bytes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--batch", type=int, default=2000, help="rows per insert request")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    n = args.n or (5_000 if args.quick else 50_000)
    from cirlab.index import create_index

    x, q = clustered_embeddings(n, nq=args.queries)
    ids = [f"img{i}" for i in range(n)]
    exact = create_index("exact", dim=x.shape[1])
    exact.add(ids, x)
    t = time.perf_counter()
    _, truth = exact.search(q, 10)
    exact_qps = len(q) / (time.perf_counter() - t)
    print(f"# Milvus Lite via cirlab, n={n}, d={x.shape[1]}, insert batch {args.batch}; "
          f"cirlab exact: {exact_qps:.0f} q/s (batched)")
    print(f"{'index_type':<10} {'insert vec/s':>12} {'q/s (1 by 1)':>12} {'q/s (x100)':>10} {'recall@10':>9} {'B/vec':>6}")
    for opts in ("", "?index_type=HNSW&M=16&efConstruction=200&ef=64"):
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.db"
            index = create_index(f"milvus:{db}{opts}", dim=x.shape[1], batch=args.batch)
            t = time.perf_counter()
            index.add(ids, x)
            index.save(Path(tmp) / "idx")  # flushes
            t_ins = time.perf_counter() - t
            nq1 = min(len(q), 50)
            t = time.perf_counter()
            for r in range(nq1):
                index.search(q[r:r + 1], 10)
            qps1 = nq1 / (time.perf_counter() - t)
            t = time.perf_counter()
            found = []
            for s in range(0, len(q), 100):
                found += index.search(q[s:s + 100], 10)[1]
            qps100 = len(q) / (time.perf_counter() - t)
            rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
            size = dir_bytes(db)
            index.close()
        print(f"{index.index_type:<10} {n / t_ins:>12.0f} {qps1:>12.1f} {qps100:>10.1f} {rec:>9.3f} {size / n:>6.0f}",
              flush=True)


if __name__ == "__main__":
    import _machine

    sys.exit(_machine.run(main))
