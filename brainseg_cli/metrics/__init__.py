"""Segmentation metrics: overlap, surface distances, regions, lesion-wise scores, folder evaluation.

Pure functions first (:func:`~brainseg_cli.metrics.overlap.dice`,
:func:`~brainseg_cli.metrics.overlap.dice_per_label`,
:func:`~brainseg_cli.metrics.surface.surface_distances`,
:func:`~brainseg_cli.metrics.lesionwise.lesion_wise`), then
:func:`~brainseg_cli.metrics.evaluation.evaluate_case` for one case and
:func:`~brainseg_cli.metrics.evaluation.evaluate_folders` for ``brainseg evaluate``.
Definitions: docs/DEFINITIONS.md §3.
"""

from brainseg_cli.metrics.evaluation import EvaluateConfig, EvaluationResult, evaluate_case, evaluate_folders
from brainseg_cli.metrics.overlap import dice, dice_per_label

__all__ = ["EvaluateConfig", "EvaluationResult", "dice", "dice_per_label", "evaluate_case", "evaluate_folders"]
