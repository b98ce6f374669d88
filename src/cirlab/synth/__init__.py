"""Synthetic triplets (DAIG): scripting text triplets, generating image triplets, adapting the generator.

Scripters (``TemplateScripter``, ``LLMScripter``) write text triplets ``(T_r, T_c, T_t)``;
generators (``GENERATORS``: ``world[:unadapted|real|STYLE.json]``) turn them into an
image-triplet dataset in the cirlab format; ``fit_style`` adapts the world generator
to a few real samples (the world's analog of CIR-LoRA).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence

from ..errors import CirlabError
from ..registry import Registry, split_spec
from ..world.scene import Style
from .scripting import LLMConfig, LLMError, LLMScripter, TemplateScripter, TemplateSet
from .triplets import RESPONSE_SCHEMA, TRIPLET_SCHEMA, TextTriplet, dedup, read_text_triplets, write_text_triplets
from .world import REAL, UNADAPTED, StyleFit, WorldGenerator, fit_style, frechet_diagonal, parse_description


class TripletGenerator(Protocol):
    """Text triplets -> an image-triplet dataset directory (gallery.jsonl + triplets.jsonl + images/)."""

    name: str

    def check(self, triplet: TextTriplet) -> str | None: ...

    def generate(self, triplets: Sequence[TextTriplet], out: str | Path, progress: bool = True) -> Path: ...


GENERATORS: Registry[TripletGenerator] = Registry("generator")


def style_from_json(path: str | Path) -> Style:
    p = Path(path)
    try:
        d = json.loads(p.read_text())
        d = d.get("fitted", d)  # a fit report or a bare style
        return Style(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise CirlabError(f"{p}: not a style JSON ({e})") from None


@GENERATORS.register("world", help="the world's renderer; world[:unadapted|real|STYLE.json]")
def _world(arg: str, resolution: int = 64, seed: int = 0) -> TripletGenerator:
    presets = {"": UNADAPTED, "unadapted": UNADAPTED, "real": REAL}
    style = presets[arg] if arg in presets else style_from_json(arg)
    return WorldGenerator(style, resolution, seed)


def create_generator(spec: str, **kwargs) -> TripletGenerator:
    name, arg = split_spec(spec)
    return GENERATORS.get(name)(arg, **kwargs)


__all__ = ["GENERATORS", "LLMConfig", "LLMError", "LLMScripter", "REAL", "RESPONSE_SCHEMA", "StyleFit",
           "TRIPLET_SCHEMA", "TemplateScripter", "TemplateSet", "TextTriplet", "TripletGenerator", "UNADAPTED",
           "WorldGenerator", "create_generator", "dedup", "fit_style", "frechet_diagonal", "parse_description",
           "read_text_triplets", "write_text_triplets"]
