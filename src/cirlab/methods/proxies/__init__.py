"""Pluggable pieces of the generative methods (CIG, IP-CIR): captioners, rewriters, pixel generators.

Importing this package registers the pixel generators ``world-render``, ``t2i`` and ``diffusers`` in
``cirlab.methods.generators.PROXY_GENERATORS``. Everything named ``world`` here, the ``lexical`` rewriter
(``cirlab.methods.lexical``) and the ``t2i`` generator are *analogs* for the built-in world (which has no
captioning model, LLM or diffusion model); ``world`` rewriter and ``world-render`` are oracles (they
replay the world's grammar and renderer): see ``docs/ip-cir.md``.
"""
from .captioners import (
           CAPTIONERS,
           Captioner,
           HFCaptioner,
           NearestCaptionCaptioner,
           create_captioner,
)
from .pixels import DiffusersGenerator, WorldRenderGenerator, imagine_captions
from .rewriters import (
           REWRITERS,
           LLMRewriter,
           Rewriter,
           WorldRuleRewriter,
           create_rewriter,
)
from .t2i import T2IErrors, TextToImageGenerator

__all__ = [
           "CAPTIONERS",
           "REWRITERS",
           "Captioner",
           "DiffusersGenerator",
           "HFCaptioner",
           "LLMRewriter",
           "NearestCaptionCaptioner",
           "Rewriter",
           "T2IErrors",
           "TextToImageGenerator",
           "WorldRenderGenerator",
           "WorldRuleRewriter",
           "create_captioner",
           "create_rewriter",
           "imagine_captions",
]
