"""Visualisation: overlay PNGs, metric plots, training curves and the self-contained HTML report.

Rendering uses matplotlib's Agg canvas directly (no pyplot, no global backend state); matplotlib is
imported only when something is drawn.
"""

from brainseg_cli.viz.curves import write_curves
from brainseg_cli.viz.overlays import OverlayConfig, OverlayInputs, iter_overlays, render_overlay, write_overlays
from brainseg_cli.viz.plots import load_results, write_metric_plots
from brainseg_cli.viz.report import ReportConfig, write_report

__all__ = [
    "OverlayConfig",
    "OverlayInputs",
    "ReportConfig",
    "iter_overlays",
    "load_results",
    "render_overlay",
    "write_curves",
    "write_metric_plots",
    "write_overlays",
    "write_report",
]
