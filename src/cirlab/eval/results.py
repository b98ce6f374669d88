"""An evaluation run on disk: ``results.json`` plus the per-query rankings beside it.

``write_results(path, results, ...)`` writes the metrics JSON at ``path`` and every method's
ranking of every query to ``<stem>.rankings.json`` (``{"depth": 50, "rankings": {method:
{query id: [gallery ids, best first]}}}``), named in the results under ``"rankings"``, so that
tools reading a run later (reports, the FiftyOne export) see exactly what was scored.
``read_run`` reads both back and checks them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data.jsonl import write_json
from ..errors import CirlabError
from .evaluate import RANK_DEPTH, EvalResult

RESULTS_FILE = "results.json"


def rankings_path(results_path: Path) -> Path:
    return results_path.with_name(results_path.stem + ".rankings.json")


def write_results(path: str | Path, results: Sequence[EvalResult], **fields: Any) -> Path:
    """Write ``{**fields, "results": [...], "rankings": FILE}`` to ``path`` and the rankings to FILE."""
    path = Path(path)
    ranks = rankings_path(path)
    write_json(ranks, {"depth": RANK_DEPTH, "rankings": {r.method: r.rankings for r in results}}, indent=None)
    payload = {**fields, "results": [r.to_json() for r in results], "rankings": ranks.name}
    return write_json(path, payload)


@dataclass
class Run:
    """A finished evaluation read back: its results JSON and its rankings per method."""

    path: Path
    payload: dict[str, Any]
    rankings: dict[str, dict[str, list[str]]] = field(repr=False)

    @property
    def methods(self) -> list[str]:
        return [r["method"] for r in self.payload["results"]]

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.payload["results"])

    @property
    def dataset(self) -> str | None:
        return self.payload.get("dataset")

    @property
    def index_dir(self) -> Path | None:
        d = self.payload.get("index_dir")
        return Path(d) if d else None

    def backbones(self) -> list[str]:
        return sorted({r["backbone"] for r in self.payload["results"]})


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CirlabError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise CirlabError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def read_run(source: str | Path) -> Run:
    """A run from its results JSON or from the directory holding ``results.json``."""
    path = Path(source)
    if path.is_dir():
        path = path / RESULTS_FILE
    payload = _read_json(path)
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise CirlabError(f"{path}: not a cirlab results file (no 'results' list)")
    if "rankings" not in payload:
        raise CirlabError(f"{path}: has no per-query rankings; re-run `cirlab eval --out` or `cirlab demo` "
                          "(they write them beside the results)")
    ranks_p = path.parent / payload["rankings"]
    ranks = _read_json(ranks_p).get("rankings", {})
    missing = [r["method"] for r in payload["results"] if r["method"] not in ranks]
    if missing:
        raise CirlabError(f"{ranks_p}: no rankings for method(s) {', '.join(missing)}")
    return Run(path, payload, ranks)
