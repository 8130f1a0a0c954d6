"""Segmentation networks: one architecture per module, a registry, a common stage layout.

Every model is a :class:`SegmentationModel` built with :func:`build_model`; its parameters are
grouped into the stages of docs/DEFINITIONS.md §6 (``encoder.K``, ``bottleneck``, ``decoder.K``, ``head``), see
:mod:`brainseg_cli.models.base`. Models return logits; softmax or sigmoid is applied by the loss
and by inference.
"""

from brainseg_cli.models.base import SegmentationModel, stage_of
from brainseg_cli.models.registry import (
    MODEL_NAMES,
    ModelInfo,
    build_model,
    img_size_multiple,
    model_info,
    model_options,
    models_for_dims,
)
from brainseg_cli.models.unet import plan_unet_topology

__all__ = [
    "MODEL_NAMES",
    "ModelInfo",
    "SegmentationModel",
    "build_model",
    "img_size_multiple",
    "model_info",
    "model_options",
    "models_for_dims",
    "plan_unet_topology",
    "stage_of",
]
