"""Inference: sliding window with Gaussian weighting and mirroring, post-processing, prediction.

The pure operations are importable from here; :mod:`brainseg_cli.inference.predict` holds the
folder-level ``predict`` pipeline.
"""

from brainseg_cli.inference.postprocess import (
    apply_largest_component,
    keep_largest_component,
    probabilities_to_labels,
    region_label_values,
)
from brainseg_cli.inference.sliding_window import gaussian_importance_map, sliding_window_predict, window_starts

__all__ = [
    "apply_largest_component",
    "gaussian_importance_map",
    "keep_largest_component",
    "probabilities_to_labels",
    "region_label_values",
    "sliding_window_predict",
    "window_starts",
]
