"""Inference presets: how each published method's own code queries each benchmark.

A preset fixes, per method family and benchmark, what changes scores beyond the weights:

- ``template``: the query text with ``{caption}``; ``$`` stands for the pseudo word (the backbone's
  placeholder; Pic2Word's code writes it ``*``, which encodes identically once replaced);
- ``join``: the Fashion IQ caption join (a name in ``templates.JOINS``: order, stripping,
  capitalisation; several formats are averaged as normalised query features);
- ``exclude_reference``: whether the reference is removed from its own ranking (the authors' rule;
  it matches each benchmark's protocol: CIRR only);
- ``pseudo_at``: which placeholders receive the pseudo token (``first`` in Pic2Word's and SEARLE's
  code, ``all`` in LinCIR's);
- ``config``: method config fields the authors set per benchmark (CIG's fusion weight: 0.5 on CIRR,
  0.7 on CIRCO); the zoo writes them into the entry's config for that benchmark.

Checkpoints made by the importers (``cirlab.zoo.importers``) and by ``--recipe paper`` name their
family in their config (``preset``); ``cirlab eval --benchmark`` and ``cirlab submit`` then use that
family's preset unless ``--template`` / ``--caption-join`` are given. The facts are those of the
official repositories (google-research/composed_image_retrieval, miccunifi/SEARLE, navervision/lincir).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import CirlabError
from .templates import PromptConfig, get_join

BENCHMARKS = ("cirr", "circo", "fashioniq")


@dataclass(frozen=True)
class InferencePreset:
    template: str
    join: str = "and"
    exclude_reference: bool = False
    pseudo_at: str = "all"
    #: where the choice comes from (or why it is cirlab's where the authors gave none)
    source: str = ""
    #: method config fields set per benchmark (e.g. CIG's fusion weight)
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_join(self.join)
        PromptConfig(self.template, self.join)
        if self.pseudo_at not in ("all", "first"):
            raise CirlabError(f"inference preset: pseudo_at={self.pseudo_at!r}: use 'all' or 'first'")

    def prompt(self) -> PromptConfig:
        return PromptConfig(self.template, self.join)

    @property
    def query_template(self) -> str:
        """The template in the form a pseudo-word checkpoint stores it (``{text}`` for the caption)."""
        return self.template.replace("{caption}", "{text}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_PIC2WORD_SRC = "google-research/composed_image_retrieval src/eval_utils.py"
_SEARLE_SRC = "miccunifi/SEARLE src/validate.py"
_LINCIR_SRC = "navervision/lincir validate.py"
_CLIP4CIR_SRC = "ABaldrati/CLIP4Cir src/validate.py"
_CIG_SRC = "lan-lw/ComposedImageGen (retrieval with SEARLE's prompt; fusion weight per dataset)"
_IPCIR_SRC = "LeyRio/Imagine-and-Seek src/retrieval_circo.py"


def _family(template: str, fiq_join: str, pseudo_at: str, source: str,
            circo: str = "") -> dict[str, InferencePreset]:
    return {
        "cirr": InferencePreset(template, "and", True, pseudo_at, source),
        "circo": InferencePreset(template, "and", False, pseudo_at, circo or source),
        "fashioniq": InferencePreset(template, fiq_join, False, pseudo_at, source),
    }


#: family -> benchmark -> preset
PRESETS: dict[str, dict[str, InferencePreset]] = {
    "pic2word": _family("a photo of $ , {caption}", "pic2word", "first", _PIC2WORD_SRC,
                        circo="Pic2Word reports no CIRCO runs; its CIRR prompt is used"),
    "searle": _family("a photo of $ that {caption}", "searle", "first", _SEARLE_SRC),
    "lincir": _family("a photo of $ that {caption}", "searle", "all", _LINCIR_SRC),
    # the Combiner encodes the caption alone; Fashion IQ: "{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"
    "clip4cir": {"cirr": InferencePreset("{caption}", "and", True, "all", _CLIP4CIR_SRC),
                 "fashioniq": InferencePreset("{caption}", "clip4cir", False, "all", _CLIP4CIR_SRC)},
    # CIG's inversion applies its own query template to the caption
    "cig": {"cirr": InferencePreset("{caption}", "and", True, "first", _CIG_SRC, {"weight": 0.5}),
            "circo": InferencePreset("{caption}", "and", False, "first", _CIG_SRC, {"weight": 0.7})},
    "ip-cir": {"circo": InferencePreset("{caption}", "and", False, "all", _IPCIR_SRC),
               "cirr": InferencePreset("{caption}", "and", True, "all",
                                       "cirlab's: the authors' released script covers CIRCO only")},
}


def register_preset(family: str, benchmark: str, preset: InferencePreset) -> InferencePreset:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"inference preset for unknown benchmark {benchmark!r} (known: {', '.join(BENCHMARKS)})")
    PRESETS.setdefault(family, {})[benchmark] = preset
    return preset


def get_preset(family: str, benchmark: str) -> InferencePreset:
    if family not in PRESETS:
        raise CirlabError(f"no inference preset {family!r}; known: {', '.join(sorted(PRESETS))}")
    if benchmark not in PRESETS[family]:
        raise CirlabError(f"inference preset {family!r} has nothing for {benchmark!r} "
                          f"(has: {', '.join(sorted(PRESETS[family]))})")
    return PRESETS[family][benchmark]


def method_preset(method: Any, benchmark: str) -> InferencePreset | None:
    """The preset of a method that names its family (``method.preset``), for ``benchmark``; else None."""
    family = getattr(method, "preset", "") or ""
    if not family:
        return None
    return get_preset(family, benchmark)


__all__ = ["BENCHMARKS", "InferencePreset", "PRESETS", "get_preset", "method_preset", "register_preset"]
