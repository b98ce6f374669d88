"""Zero-shot CIR by textual inversion: Pic2Word, SEARLE (OTI + phi), LinCIR.

The reference image becomes a pseudo word ``$`` in the text encoder's input space
and the query is the text feature of "a photo of $ that {text}". Trained with
``cirlab train method pic2word|searle|lincir``; used as ``pic2word:DIR`` etc.
"""
from .concepts import ConceptVocabulary
from .methods import PhiMethod, PseudoWordMethod, SearleOTI
from .oti import OTI, OTIConfig
from .phi import Checkpoint, Phi, PhiConfig, load_checkpoint
from .prompts import PRESETS, PromptTemplates, get_templates

__all__ = ["Checkpoint", "ConceptVocabulary", "OTI", "OTIConfig", "PRESETS", "Phi", "PhiConfig", "PhiMethod",
           "PromptTemplates", "PseudoWordMethod", "SearleOTI", "get_templates", "load_checkpoint"]
