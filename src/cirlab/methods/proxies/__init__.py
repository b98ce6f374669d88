"""Pluggable pieces of the generative methods (CIG, IP-CIR): captioners, rewriters, pixel generators.

Importing this package registers the pixel generators ``world-render`` and ``diffusers`` in
``cirlab.methods.generators.PROXY_GENERATORS``. Everything named ``world`` here is an *analog* for the
built-in world (which has no captioning model, LLM or diffusion model): see ``docs/ip-cir.md``.
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

__all__ = [
           "CAPTIONERS",
           "REWRITERS",
           "Captioner",
           "DiffusersGenerator",
           "HFCaptioner",
           "LLMRewriter",
           "NearestCaptionCaptioner",
           "Rewriter",
           "WorldRenderGenerator",
           "WorldRuleRewriter",
           "create_captioner",
           "create_rewriter",
           "imagine_captions",
]
