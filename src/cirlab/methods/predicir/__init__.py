"""PrediCIR ("Missing target-relevant information prediction with world model", CVPR 2025).

``views`` makes world views (crop = source, caption = action, full image = target),
``model`` holds the target content predictor and the alignment fusion, ``method``
registers ``predicir:CHECKPOINT_DIR``. Training: ``cirlab.train.predicir``.
"""
from . import method  # noqa: F401  (registers the method)
from .model import (
           PrediCIRCheckpoint,
           PrediCIRConfig,
           PrediCIRModel,
           load_predicir,
           new_model,
)
from .views import CropBox, ViewConfig, sample_crop, source_views, visible_masks

__all__ = ["CropBox", "PrediCIRCheckpoint", "PrediCIRConfig", "PrediCIRModel", "ViewConfig", "load_predicir",
           "new_model", "sample_crop", "source_views", "visible_masks"]
