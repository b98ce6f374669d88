"""Loading a saved index with its checksums checked vs without: the cost of integrity on every load.

    python benchmarks/index_load.py              # 200k x 512 float32 (400 MB), exact and exact?mmap=1
    python benchmarks/index_load.py --quick      # 20k x 512

Three ways to load the same saved index, timed alternately (``--rounds`` times each, best round kept,
page cache warm for all):

- ``plain``: the backend's own reader (``ExactIndex.load``): what loading cost before checksums;
- ``checked``: ``load_index``: manifest checks + the sealed files' fast path (one ``stat`` each,
  re-hashed only when size or mtime changed) + the same reader: what every search/serve/eval load does;
- ``verify``: ``verify_index``: every file re-hashed (SHA-256) and then loaded (``cirlab index --verify``).

Goal: ``checked / plain`` <= 1.05 (within 5% of the load without checksums).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def best(fn, rounds: int) -> float:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="20k vectors, 5 rounds")
    args = ap.parse_args()
    if args.quick:
        args.n, args.rounds = 20_000, 5

    from cirlab.index import create_index
    from cirlab.index.base import load_index, read_manifest
    from cirlab.index.exact import ExactIndex
    from cirlab.index.integrity import verify_index

    x = torch.nn.functional.normalize(torch.randn(args.n, args.dim, generator=torch.Generator().manual_seed(0)), dim=1)
    ids = [f"img{i:07d}" for i in range(args.n)]
    print(f"{args.n} x {args.dim} float32 ({x.numel() * 4 / 1e6:.0f} MB), best of {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ("exact", "exact?mmap=1"):
            d = Path(tmp) / spec.replace("?", "-")
            index = create_index(spec, dim=args.dim)
            index.add(ids, x)
            index.save(d, {"backbone": "bench"})
            manifest = read_manifest(d)

            def plain() -> None:
                ExactIndex.load(d, read_manifest(d))

            def checked() -> None:
                load_index(d)

            def verify() -> None:
                n, problems = verify_index(d)
                assert n == args.n and not problems, problems

            assert manifest.get("files"), "the manifest records no checksums"
            times = {"plain": [], "checked": [], "verify": []}
            for _ in range(args.rounds):  # alternate, so load from other processes hits all alike
                for name, fn in (("plain", plain), ("checked", checked), ("verify", verify)):
                    times[name].append(best(fn, 1))
            t = {k: min(v) for k, v in times.items()}
            print(f"{spec:14s} plain {t['plain'] * 1e3:8.1f} ms   checked {t['checked'] * 1e3:8.1f} ms   "
                  f"verify {t['verify'] * 1e3:8.1f} ms   checked/plain {t['checked'] / t['plain']:.3f}   "
                  f"verify/plain {t['verify'] / t['plain']:.2f}")


if __name__ == "__main__":
    main()
