"""Fusion-Diff: generative editing in the joint vision-language space (arXiv 2512.01636).

- ``fusion``: the fusion module, (image, text) features -> one fused feature;
- ``prior``: the diffusion prior, a denoiser over image embeddings conditioned on text;
- ``scheduler``: the DDIM scheduler (noise schedule, training noise, sampling steps);
- ``adapter``: the Control-Adapter, zero-initialised residuals into the frozen prior;
- ``pipeline``: sampling; ``checkpoint``: safetensors + JSON; ``method``: the registered
  method and proxy generator ``fusion-diff:CKPT_DIR``; ``plot``: the 2-D interpretability view.
"""
from .adapter import AdapterConfig, ControlAdapter
from .checkpoint import KIND, FusionDiffCheckpoint, load_fusion_diff
from .fusion import FusionConfig, FusionModule
from .method import FusionDiffGenerator, FusionDiffMethod, parse_spec_arg
from .pipeline import FusionDiffPipeline, SamplingConfig
from .prior import EmbeddingPrior, PriorConfig
from .scheduler import DDIMConfig, DDIMScheduler

__all__ = [
           "KIND",
           "AdapterConfig",
           "ControlAdapter",
           "DDIMConfig",
           "DDIMScheduler",
           "EmbeddingPrior",
           "FusionConfig",
           "FusionDiffCheckpoint",
           "FusionDiffGenerator",
           "FusionDiffMethod",
           "FusionDiffPipeline",
           "FusionModule",
           "PriorConfig",
           "SamplingConfig",
           "load_fusion_diff",
           "parse_spec_arg",
]
