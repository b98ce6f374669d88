"""Prompt templates: how a benchmark's caption(s) become the text a method receives.

Templates change scores, so they are configuration, recorded in every results file
(``PromptConfig.to_json``):

- ``template``: a format string with ``{caption}`` (or a preset name from
  ``TEMPLATES``), e.g. ``"a photo of $ that {caption}"`` for textual-inversion
  methods (``$`` is the backbone's placeholder word).
- ``join`` (Fashion IQ, two captions per query): a preset from ``JOINS`` or a format
  string with ``{c1}`` and ``{c2}``. A preset with several formats (``both``) makes
  one query text per format; the method's query embeddings of the variants are
  averaged, which ranks exactly like averaging their similarity scores.

Each caption is stripped of surrounding whitespace before joining (several Fashion
IQ captions start with a space). ``clip4cir`` is CLIP4Cir's own join: each caption stripped
of ``'.?, '``, the first capitalised, "{c1} and {c2}".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..data.record import CIRTriplet
from ..errors import CirlabError

TEMPLATES: dict[str, str] = {
    "plain": "{caption}",
    "photo-that": "a photo of $ that {caption}",
}

JOINS: dict[str, tuple[str, ...]] = {
    "and": ("{c1} and {c2}",),
    "and-reversed": ("{c2} and {c1}",),
    "both": ("{c1} and {c2}", "{c2} and {c1}"),
}


def clip4cir_join(c1: str, c2: str) -> list[str]:
    """CLIP4Cir's Fashion IQ query text: ``f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"``."""
    return [f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"]


#: joins that are functions of the two raw captions (their own stripping), with the format they produce
JOIN_FUNCTIONS: dict[str, tuple[Callable[[str, str], list[str]], str]] = {
    "clip4cir": (clip4cir_join, "{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"),
}


def _formats(join: str) -> tuple[str, ...]:
    if join in JOIN_FUNCTIONS:
        return (JOIN_FUNCTIONS[join][1],)
    if join in JOINS:
        return JOINS[join]
    if "{c1}" in join and "{c2}" in join:
        return (join,)
    raise CirlabError(f"caption join {join!r}: use one of {', '.join([*JOINS, *JOIN_FUNCTIONS])} or a format with "
                      f"{{c1}} and {{c2}}")


def join_captions(c1: str, c2: str, join: str = "and") -> list[str]:
    """The query text(s) for a pair of captions under ``join``."""
    if join in JOIN_FUNCTIONS:
        return JOIN_FUNCTIONS[join][0](c1, c2)
    a, b = c1.strip(), c2.strip()
    try:
        return [f.format(c1=a, c2=b) for f in _formats(join)]
    except (KeyError, IndexError) as e:
        raise CirlabError(f"caption join {join!r}: unknown field {e}") from None


@dataclass(frozen=True)
class PromptConfig:
    template: str = "{caption}"
    join: str = "and"

    def __post_init__(self) -> None:
        tpl = TEMPLATES.get(self.template, self.template)
        if "{caption}" not in tpl:
            raise CirlabError(f"template {self.template!r}: needs '{{caption}}' (or a preset: {', '.join(TEMPLATES)})")
        try:
            tpl.format(caption="x")
        except (KeyError, IndexError, ValueError) as e:
            raise CirlabError(f"template {self.template!r}: bad format ({e})") from None
        _formats(self.join)

    @property
    def format(self) -> str:
        return TEMPLATES.get(self.template, self.template)

    def texts(self, triplet: CIRTriplet) -> list[str]:
        """One or more query texts for ``triplet`` (several when the join averages orders)."""
        caps = triplet.meta.get("captions")
        bases = join_captions(caps[0], caps[1], self.join) if isinstance(caps, list) and len(caps) == 2 \
            else [triplet.caption]
        return [self.format.format(caption=c) for c in bases]

    def to_json(self, uses_join: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"template": self.format}
        if uses_join:
            out["join"] = self.join
            out["join_formats"] = list(_formats(self.join))
        return out
