"""Standard CIR benchmarks: CIRR, Fashion IQ and CIRCO, exactly as their official protocols.

``get_benchmark("cirr").load(root, "val")`` gives a ``BenchmarkSplit`` (common
``CIRDataset`` records); ``protocols`` computes the official metrics from rankings,
``submission`` writes the test servers' files and ``validate`` checks them offline.
``run_eval`` is what ``cirlab eval --benchmark`` calls. See docs/benchmarks.md.
"""
from __future__ import annotations

from typing import Any

from ..errors import CirlabError
from ..registry import Registry
from .base import Benchmark, BenchmarkSplit, Problems
from .circo import CIRCO
from .cirr import CIRR
from .fashioniq import FashionIQ

BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
BENCHMARKS.register("cirr", help="CIRR rc2 (Liu et al., ICCV 2021): val, test1 (server)")(CIRR)
BENCHMARKS.register("fashioniq", help="Fashion IQ (Wu et al., CVPR 2021): val per category")(FashionIQ)
BENCHMARKS.register("circo", help="CIRCO (Baldrati et al., ICCV 2023): val, test (server)")(CIRCO)


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS.get(name.lower())()
    except KeyError as e:
        raise CirlabError(str(e.args[0])) from None


def run_eval(args: Any) -> int:
    """``cirlab eval --benchmark ...`` (see ``cirlab.benchmarks.run``)."""
    from .run import run_eval as _run

    return _run(args)


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkSplit", "CIRCO", "CIRR", "FashionIQ", "Problems", "get_benchmark",
           "run_eval"]
