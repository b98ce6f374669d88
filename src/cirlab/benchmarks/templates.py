"""Prompt templates: how a benchmark's caption(s) become the text a method receives.

Templates change scores, so they are configuration, recorded in every results file
(``PromptConfig.to_json``):

- ``template``: a format string with ``{caption}`` (or a preset name from
  ``TEMPLATES``), e.g. ``"a photo of $ that {caption}"`` for textual-inversion
  methods (``$`` is the backbone's placeholder word).
- ``join`` (Fashion IQ, two captions per query): a name from ``JOINS`` or a format
  string with ``{c1}`` and ``{c2}``. A join with several formats (``both``) makes
  one query text per format; the method's query embeddings of the variants are
  averaged, which ranks exactly like averaging their similarity scores.

A ``CaptionJoin`` also says how each caption is cleaned first: stripped of
surrounding whitespace by default (several Fashion IQ captions start with a space),
of other characters where an author's code does so (SEARLE and LinCIR strip
``'.?, '``), or not at all (Pic2Word joins the raw captions, second one first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.record import CIRTriplet
from ..errors import CirlabError

TEMPLATES: dict[str, str] = {
    "plain": "{caption}",
    "photo-that": "a photo of $ that {caption}",
}

@dataclass(frozen=True)
class CaptionJoin:
    """How two captions become query text(s): ``formats`` with ``{c1}``/``{c2}``, each caption first
    stripped of ``strip`` (``None``: whitespace; ``""``: kept as it is) and, with ``capitalize``, the
    first caption ``str.capitalize()``-d after stripping."""

    formats: tuple[str, ...]
    strip: str | None = None
    capitalize: bool = False

    def texts(self, c1: str, c2: str) -> list[str]:
        a, b = (c if self.strip == "" else c.strip(self.strip) for c in (c1, c2))
        if self.capitalize:
            a = a.capitalize()
        return [f.format(c1=a, c2=b) for f in self.formats]


BOTH_ORDERS = ("{c1} and {c2}", "{c2} and {c1}")

#: the named caption joins (``--caption-join``, inference presets)
JOINS: dict[str, CaptionJoin] = {
    "and": CaptionJoin(("{c1} and {c2}",)),
    "and-reversed": CaptionJoin(("{c2} and {c1}",)),
    "both": CaptionJoin(BOTH_ORDERS),
    # Pic2Word's Fashion IQ query: the second caption first, captions not stripped at all
    "pic2word": CaptionJoin(("{c2} and {c1}",), strip=""),
    # SEARLE's and LinCIR's: both orders averaged, each caption .strip('.?, ')
    "searle": CaptionJoin(BOTH_ORDERS, strip=".?, "),
    # CLIP4Cir's: f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"
    "clip4cir": CaptionJoin(("{c1} and {c2}",), strip=".?, ", capitalize=True),
}


def register_join(name: str, join: CaptionJoin) -> CaptionJoin:
    if name in JOINS and JOINS[name] != join:
        raise ValueError(f"caption join {name!r} is already registered")
    JOINS[name] = join
    return join


def get_join(join: str) -> CaptionJoin:
    if join in JOINS:
        return JOINS[join]
    if "{c1}" in join and "{c2}" in join:
        return CaptionJoin((join,))
    raise CirlabError(f"caption join {join!r}: use one of {', '.join(JOINS)} or a format with {{c1}} and {{c2}}")


def join_captions(c1: str, c2: str, join: str = "and") -> list[str]:
    """The query text(s) for a pair of captions under ``join``."""
    try:
        return get_join(join).texts(c1, c2)
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
        get_join(self.join)

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
            j = get_join(self.join)
            out["join_formats"] = list(j.formats)
            out["join_strip"] = "whitespace" if j.strip is None else j.strip
            if j.capitalize:
                out["join_capitalize"] = True
        return out
