"""Reproducible experiments on the built-in world: the orchestration the ``cirlab experiment`` commands call.

One module per experiment, each with a config dataclass, a ``run_*`` function returning a
JSON-able payload and a ``markdown`` renderer:

- ``zeroshot``: Pic2Word, SEARLE and LinCIR trained on world/train, compared on world/test;
- ``generative``: every registered zero-shot trainer over several seeds, per edit-kind group;
- ``daig``: few-shot supervised CIR with synthetic pre-training (DAIG) and its ablation.

Layering: ``cli -> experiments -> train / synth / methods / eval``; nothing here imports the CLI.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..fileutil import atomic_write_text


def write_results(payload: dict[str, Any], md: str, out: Path, report: Path | None = None) -> None:
    """``OUT/results.json`` + ``OUT/results.md`` and, with ``report``, ``REPORT.json`` + ``REPORT.md`` (atomic)."""
    for prefix in [Path(out) / "results"] + ([Path(report)] if report else []):
        atomic_write_text(prefix.with_suffix(".json"), json.dumps(payload, indent=1))
        atomic_write_text(prefix.with_suffix(".md"), md)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def md_row(cells: Sequence[str]) -> str:
    """One row of a markdown table."""
    return "| " + " | ".join(cells) + " |"


__all__ = ["md_row", "mean_std", "write_results"]
