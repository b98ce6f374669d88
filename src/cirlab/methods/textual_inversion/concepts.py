"""An offline concept vocabulary: the backbone tokenizer's words that are nouns or attribute words.

SEARLE regularises OTI tokens with phrases about the image's concepts (the paper
picks them by zero-shot classification over a noun list and has GPT write the
phrases); LinCIR replaces a caption's key words by the pseudo word. Both need to
know which words are concepts. Without a tagger or a language model, a word
counts as a concept when it is

* a whole word of the backbone's tokenizer (tiny: its word list; CLIP BPE: tokens
  ending in ``</w>``; SentencePiece: pieces starting with ``▁``), and
* a noun: a shape of the built-in world, the head noun (last word) of an ImageNet
  class name (``cirlab/assets/imagenet_classes.json``), or one of ``COMMON_NOUNS``;
  or an attribute word: a world colour or size, or one of ``ATTRIBUTE_WORDS``.

Attributes are included because the world's (and fashion's) objects differ by
colour and size as much as by category. Function words (``a``, ``the``, ``at``)
are in none of the lists, and position words (``POSITION_WORDS``: ``top``, ``left``,
``center``...) are removed from all of them, so neither ever counts.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from ...backbones.base import Backbone
from ...errors import CirlabError
from ...world.scene import COLOURS, SHAPES, SIZES

ASSETS = Path(__file__).resolve().parents[2] / "assets"

COMMON_NOUNS = frozenset("""
person man woman boy girl child people baby dog cat bird horse cow sheep animal car truck bus bicycle
motorcycle train boat plane airplane house building room street road tree flower plant grass sky water
beach mountain field table chair bed sofa couch window door book phone bottle cup glass plate food fruit
shirt dress skirt jacket coat shoe shoes hat cap bag pants jeans sweater blouse shorts suit tie scarf
sleeve collar pattern logo print stripe dot flowerpot ball toy box sign clock lamp shape object
""".split())

ATTRIBUTE_WORDS = frozenset("""
red green blue yellow purple cyan orange gray grey black white pink brown beige gold silver navy maroon
teal violet turquoise magenta dark light bright pale colorful colourful
small large big tiny huge little long short tall wide narrow thin thick
wooden metal plastic leather denim cotton silk wool striped checked plaid floral dotted plain
""".split())


@lru_cache(maxsize=1)
def imagenet_head_nouns() -> frozenset[str]:
    p = ASSETS / "imagenet_classes.json"
    if not p.is_file():
        return frozenset()
    names = json.loads(p.read_text())["classes"]
    return frozenset(n.split()[-1].lower() for n in names if n.split() and n.split()[-1].isalpha())


#: words for places in an image, never concepts even where a list has them as nouns
#: ("entertainment center"; "top" the garment)
POSITION_WORDS = frozenset("top bottom left right center centre middle front back side corner".split())


def concept_words() -> frozenset[str]:
    """Every word that counts as a noun or attribute (before intersecting with a tokenizer)."""
    return (frozenset(SHAPES) | frozenset(COLOURS) | frozenset(SIZES) | COMMON_NOUNS | ATTRIBUTE_WORDS
            | imagenet_head_nouns()) - POSITION_WORDS


def tokenizer_words(backbone: Backbone) -> list[str]:
    """The whole words of the backbone's tokenizer, lower-cased, in vocabulary order."""
    tok = getattr(backbone, "tokenizer", None)
    if tok is None:
        raise CirlabError(f"backbone {backbone.spec!r} exposes no tokenizer; pass a concept word list instead")
    if hasattr(tok, "get_vocab"):  # transformers: CLIP byte-level BPE or SentencePiece
        vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
        words = []
        for piece, _ in vocab:
            if piece.endswith("</w>"):
                words.append(piece[:-4])
            elif piece.startswith("\u2581"):
                words.append(piece[1:])
        return [w.lower() for w in words]
    return [w.lower() for w in getattr(tok, "vocab", [])]


@dataclass(frozen=True)
class ConceptVocabulary:
    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.words:
            raise CirlabError("the concept vocabulary is empty: the backbone's tokenizer has no known noun or "
                              "attribute word; pass a word list (--concepts FILE)")

    @staticmethod
    def for_backbone(backbone: Backbone, extra: Iterable[str] = ()) -> "ConceptVocabulary":
        known = concept_words() | {w.lower() for w in extra}
        seen: dict[str, None] = {}
        for w in tokenizer_words(backbone):
            if w.isalpha() and w in known:
                seen.setdefault(w)
        return ConceptVocabulary(tuple(seen))

    @staticmethod
    def from_file(path: str | Path) -> "ConceptVocabulary":
        p = Path(path)
        if not p.is_file():
            raise CirlabError(f"concept word list {p}: no such file (one word per line)")
        words = [w.strip().lower() for w in p.read_text().splitlines() if w.strip() and not w.startswith("#")]
        return ConceptVocabulary(tuple(dict.fromkeys(words)))

    def __len__(self) -> int:
        return len(self.words)

    def mask_keywords(self, text: str, replacement: str) -> str | None:
        """Replace every maximal run of concept words ("a small red circle" -> "a $") by ``replacement``;
        None when ``text`` has no concept word."""
        words = set(self.words)
        parts = re.split(r"([A-Za-z]+)", text)  # odd positions are words
        out: list[str] = []
        in_run = False
        found = False
        for n, part in enumerate(parts):
            if n % 2 == 1:
                if part.lower() in words:
                    found = True
                    if not in_run:
                        out.append(replacement)
                    in_run = True
                    continue
                in_run = False
                out.append(part)
            elif in_run and part.strip() == "" and n + 1 < len(parts) and parts[n + 1].lower() in words:
                continue  # whitespace inside a run
            else:
                in_run = False
                out.append(part)
        return "".join(out) if found else None


def concept_phrases(templates: Sequence[str], concept: str) -> list[str]:
    return [t.format(concept=concept) for t in templates]
