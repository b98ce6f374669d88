"""Scoring prediction files without a model (``cirlab eval-predictions``), and server submissions."""
from __future__ import annotations

from pathlib import Path

from ..errors import CirlabError
from . import get_benchmark
from .base import BenchmarkSplit, Problems
from .submission import CIRR_RECALL, CIRR_SUBSET, rankings_from
from .validate import validate_file


def score_prediction_files(split: BenchmarkSplit, predictions: Path, subset_predictions: Path | None = None
                           ) -> tuple[dict[str, float], Problems]:
    """Validate the files (lenient lengths) and compute the protocol's metrics; errors raise ``CirlabError``."""
    bench = get_benchmark(split.benchmark)
    if subset_predictions is not None and split.benchmark != "cirr":
        raise CirlabError("--subset-predictions is for CIRR only")
    problems = Problems()
    p, obj, _ = validate_file(split, predictions, server=False, metric=CIRR_RECALL if bench.name == "cirr" else None)
    problems.extend(p)
    subset = None
    if subset_predictions is not None:
        q, sub_obj, _ = validate_file(split, subset_predictions, server=False, metric=CIRR_SUBSET)
        problems.extend(q)
        subset = rankings_from(split.benchmark, sub_obj) if q.ok else None
    elif bench.name == "cirr":
        problems.warn("no --subset-predictions: recall_subset@K and avg are not computed (members may rank below "
                      "50, so they cannot be derived from the recall file)")
    problems.raise_if_errors("predictions rejected")
    if bench.name == "fashioniq" and set(obj) != set(split.parts):
        split = BenchmarkSplit(split.benchmark, split.split, split.root, {c: split.parts[c] for c in split.parts
                                                                           if c in obj}, split.has_gallery)
        problems.warn(f"only {', '.join(split.parts)} given: no average over the three categories")
    return bench.metrics(split, rankings_from(split.benchmark, obj), subset), problems
