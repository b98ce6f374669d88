"""Prompt templates of pseudo-word methods: configuration, recorded in checkpoints and results.

A template is written with ``$`` standing for the pseudo word; ``render`` swaps in
the backbone's own placeholder (``$`` for tiny and CLIP, ``§`` for SigLIP).

- ``image``: the prompt whose text feature is matched to the image feature during
  training and OTI ("a photo of $").
- ``query``: the composed query, with ``{text}`` for the modification text
  ("a photo of $ that {text}"). A query text that already contains a standalone
  ``$`` (a benchmark template applied it) is used as it is.
- ``pseudo_at``: which placeholders of a prompt receive the pseudo token: ``all`` (cirlab's
  default and LinCIR's official code) or ``first`` (Pic2Word's and SEARLE's official code;
  a later ``$`` in a caption keeps its own embedding).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from ...backbones.base import PLACEHOLDER
from ...errors import CirlabError

_STANDALONE = re.compile(r"(?<!\S)" + re.escape(PLACEHOLDER) + r"(?!\S)")


def has_placeholder(text: str) -> bool:
    return bool(_STANDALONE.search(text))


def render(text: str, placeholder: str) -> str:
    """Replace every standalone ``$`` of ``text`` by ``placeholder``."""
    return _STANDALONE.sub(lambda _: placeholder, text)


@dataclass(frozen=True)
class PromptTemplates:
    image: str = "a photo of $"
    query: str = "a photo of $ that {text}"
    pseudo_at: str = "all"

    def __post_init__(self) -> None:
        if self.pseudo_at not in ("all", "first"):
            raise CirlabError(f"prompt templates: pseudo_at={self.pseudo_at!r}: use 'all' or 'first'")
        for field, tpl in (("image", self.image), ("query", self.query)):
            if not has_placeholder(tpl):
                raise CirlabError(f"prompt template {field}={tpl!r}: needs the pseudo word '$' as a separate word")
        if "{text}" not in self.query:
            raise CirlabError(f"prompt template query={self.query!r}: needs '{{text}}' for the modification text")
        try:
            self.query.format(text="x")
        except (KeyError, IndexError, ValueError) as e:
            raise CirlabError(f"prompt template query={self.query!r}: bad format ({e})") from None

    def image_prompt(self, placeholder: str) -> str:
        return render(self.image, placeholder)

    def query_prompt(self, text: str, placeholder: str) -> str:
        if has_placeholder(text):
            return render(text, placeholder)
        return render(self.query.format(text=text.strip()), placeholder)

    @property
    def first_only(self) -> bool:
        return self.pseudo_at == "first"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "PromptTemplates":
        unknown = set(d) - {"image", "query", "pseudo_at"}
        if unknown:
            raise CirlabError(f"prompt templates: unknown field(s) {sorted(unknown)}")
        return PromptTemplates(**d)


#: per-dataset presets; ``world`` follows the wording of the built-in world's captions ("a picture of ...")
PRESETS: dict[str, PromptTemplates] = {
    "photo": PromptTemplates(),
    "world": PromptTemplates("a picture of $", "a picture of $ that {text}"),
    "fashion": PromptTemplates("a photo of $", "a photo of $ that {text}"),
}


def get_templates(name_or_query: str | None) -> PromptTemplates:
    """A preset name, or a query template with ``{text}`` (the image prompt is then its part before ``that``...)."""
    if not name_or_query:
        return PRESETS["photo"]
    if name_or_query in PRESETS:
        return PRESETS[name_or_query]
    if "{text}" in name_or_query:
        image = name_or_query.split("{text}")[0].strip()
        image = re.sub(r"\s+(that|which|with|but)$", "", image)
        return PromptTemplates(image or "$", name_or_query)
    raise CirlabError(f"prompt template {name_or_query!r}: give a preset ({', '.join(PRESETS)}) "
                      f"or a query template with $ and {{text}}, e.g. 'a photo of $ that {{text}}'")
