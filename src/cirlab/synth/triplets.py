"""Text triplets ``(T_r, T_c, T_t)``: reference description, modification, target description.

Scripters produce them, generators turn them into image triplets. On disk they are
JSONL (one object per line) validated against ``TRIPLET_SCHEMA``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import DatasetError
from .schema import schema_errors

TRIPLET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["reference", "modification", "target"],
    "additionalProperties": False,
    "properties": {
        "reference": {"type": "string", "minLength": 3, "maxLength": 400},
        "modification": {"type": "string", "minLength": 3, "maxLength": 400},
        "target": {"type": "string", "minLength": 3, "maxLength": 400},
        "meta": {"type": "object"},
    },
}
#: what an LLM scripter must answer: ``{"triplets": [triplet, ...]}``
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["triplets"],
    "additionalProperties": False,
    "properties": {"triplets": {"type": "array", "minItems": 1, "items": TRIPLET_SCHEMA}},
}


@dataclass(frozen=True)
class TextTriplet:
    reference: str       # T_r: description of the reference image
    modification: str    # T_c: the modification text (the query's caption)
    target: str          # T_t: description of the target image
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reference": self.reference, "modification": self.modification, "target": self.target}
        if self.meta:
            out["meta"] = self.meta
        return out

    @staticmethod
    def from_json(obj: Any, where: str = "$") -> "TextTriplet":
        errs = schema_errors(obj, TRIPLET_SCHEMA, where)
        if not errs and _norm(obj["reference"]) == _norm(obj["target"]):
            errs.append(f"{where}: reference and target descriptions are the same (nothing to retrieve)")
        if errs:
            raise ValueError("; ".join(errs))
        return TextTriplet(obj["reference"].strip(), obj["modification"].strip(), obj["target"].strip(),
                           dict(obj.get("meta", {})))

    @property
    def key(self) -> tuple[str, str, str]:
        """Normalised (case, spacing, punctuation) for deduplication."""
        return _norm(self.reference), _norm(self.modification), _norm(self.target)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def dedup(triplets: Iterable[TextTriplet]) -> list[TextTriplet]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for t in triplets:
        if t.key not in seen:
            seen.add(t.key)
            out.append(t)
    return out


def write_text_triplets(path: str | os.PathLike[str], triplets: Iterable[TextTriplet]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for n, t in enumerate(triplets):
            TextTriplet.from_json(t.to_json(), f"triplet {n}")  # validate what we write
            fh.write(json.dumps(t.to_json()) + "\n")
    os.replace(tmp, p)
    return p


def read_text_triplets(path: str | os.PathLike[str]) -> list[TextTriplet]:
    p = Path(path)
    out = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{p}: file not found") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(TextTriplet.from_json(json.loads(line), f"{p}:{lineno}"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        except ValueError as e:
            raise DatasetError(str(e)) from None
    return out
