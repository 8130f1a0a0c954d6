"""Plots of an evaluation's ``results.json`` (docs/DEFINITIONS.md §5): per-case Dice, Dice box plots, HD95.

Figures are drawn with :class:`matplotlib.figure.Figure` on an Agg canvas (no pyplot, no global
state) and returned as PNG bytes, so the HTML report embeds them without touching the disk.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli.errors import InputError
from brainseg_cli.io import atomic_write

logger = logging.getLogger(__name__)

#: File names written by :func:`write_metric_plots`.
DICE_PER_CASE = "dice_per_case.png"
DICE_BOXPLOT = "dice_boxplot.png"
HD95_DISTRIBUTION = "hd95_distribution.png"

_MEAN_COLOUR = "#d62728"
_MEDIAN_COLOUR = "#2ca02c"
_BAR_COLOUR = "#4c72b0"


@dataclass(frozen=True)
class Results:
    """The per-case rows of a ``results.json``.

    Attributes:
        path: the file read.
        labels: label or region names in order of first appearance.
        metrics: numeric metric names in order of first appearance (as spelled in the file).
        rows: one dict per (case, label): ``{"case": str, "label": str, <metric>: float (NaN if null)}``.
        summary: the file's ``summary`` block (label -> metric -> statistics), ``{}`` if absent.
        definitions: the file's ``definitions`` block (e.g. the HD95 mode), ``{}`` if absent.
        empty_policy: the file's ``empty_policy``, or None.
    """

    path: Path
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    summary: dict[str, Any]
    definitions: dict[str, Any]
    empty_policy: str | None

    def metric_key(self, name: str) -> str | None:
        """The file's spelling of metric ``name`` (case-insensitive), or None when absent."""
        for key in self.metrics:
            if key.lower() == name.lower():
                return key
        return None

    def values(self, label: str, metric: str) -> list[tuple[str, float]]:
        """``(case, value)`` of ``metric`` for ``label``, NaN values left out, in file order."""
        out = []
        for row in self.rows:
            if row["label"] == label and metric in row and not math.isnan(row[metric]):
                out.append((row["case"], row[metric]))
        return out

    def count_nan(self, label: str, metric: str) -> int:
        """Number of rows of ``label`` whose ``metric`` is NaN or missing."""
        return sum(1 for row in self.rows if row["label"] == label and math.isnan(row.get(metric, math.nan)))

    @property
    def hd95_mode(self) -> str | None:
        """The HD95 definition named in ``definitions`` (e.g. ``"max"`` or ``"pooled"``), or None."""
        for key in ("hd95", "hd95_mode"):
            value = self.definitions.get(key)
            if isinstance(value, str):
                return value
        return None


def _number(value: Any) -> float | None:
    """A metric value as float (None/null -> NaN); None for values that are not numbers."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def load_results(path: str | Path) -> Results:
    """Read a ``results.json`` written by ``brainseg evaluate``.

    Args:
        path: the JSON file.

    Returns:
        The :class:`Results`.

    Raises:
        InputError: missing or unreadable file, invalid JSON, or no ``cases`` list of objects
            with ``case`` and ``label`` (the message names the file and the offending entry).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: results file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise InputError(f"{path}: not a brainseg results file (no 'cases' list)")
    labels: list[str] = []
    metrics: list[str] = []
    rows = []
    for i, entry in enumerate(data["cases"]):
        if not isinstance(entry, dict) or "case" not in entry or "label" not in entry:
            raise InputError(f"{path}: cases[{i}] is not an object with 'case' and 'label': {str(entry)[:80]}")
        row: dict[str, Any] = {"case": str(entry["case"]), "label": str(entry["label"])}
        for key, value in entry.items():
            if key in ("case", "label"):
                continue
            number = _number(value)
            if number is None:
                continue
            row[key] = number
            if key not in metrics:
                metrics.append(key)
        if row["label"] not in labels:
            labels.append(row["label"])
        rows.append(row)
    summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
    definitions = data.get("definitions") if isinstance(data.get("definitions"), dict) else {}
    policy = data.get("empty_policy") if isinstance(data.get("empty_policy"), str) else None
    return Results(path=path, labels=tuple(labels), metrics=tuple(metrics), rows=tuple(rows),
                   summary=summary, definitions=definitions, empty_policy=policy)


def figure_png(fig: Any, *, dpi: int = 100) -> bytes:
    """Render a matplotlib Figure on an Agg canvas and return PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure (constrained layout) of ``width`` x ``height`` inches, not tied to pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def dice_per_case_figure(results: Results) -> Any | None:
    """Per label, a bar per case sorted by Dice (best first) with the mean and median as lines.

    Returns:
        A matplotlib Figure (one axes per label, in ``results.labels`` order; the mean line is
        dashed, the median dotted), or None when the results have no Dice.
    """
    key = results.metric_key("dice")
    if key is None:
        return None
    n_cases = max((len(results.values(label, key)) for label in results.labels), default=0)
    width = min(30.0, max(7.0, 0.22 * n_cases + 2.5))
    fig = new_figure(width, 2.9 * len(results.labels))
    axes = fig.subplots(len(results.labels), 1, squeeze=False)[:, 0]
    for ax, label in zip(axes, results.labels):
        pairs = sorted(results.values(label, key), key=lambda p: -p[1])
        nan = results.count_nan(label, key)
        values = np.array([v for _, v in pairs], dtype=float)
        ax.bar(np.arange(len(pairs)), values, color=_BAR_COLOUR, width=0.8)
        if values.size:
            mean, median = float(values.mean()), float(np.median(values))
            ax.axhline(mean, color=_MEAN_COLOUR, linestyle="--", linewidth=1.5, label=f"mean {mean:.3f}")
            ax.axhline(median, color=_MEDIAN_COLOUR, linestyle=":", linewidth=2.0, label=f"median {median:.3f}")
            ax.legend(loc="lower left", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("Dice")
        ax.set_title(f"{label}: Dice per case, sorted (n={len(pairs)}" + (f", {nan} NaN left out)" if nan else ")"),
                     fontsize=10)
        ax.set_xticks(np.arange(len(pairs)))
        if len(pairs) <= 60:
            ax.set_xticklabels([c for c, _ in pairs], rotation=90, fontsize=7)
        else:
            ax.set_xticklabels([])
        ax.set_xlim(-0.6, max(len(pairs), 1) - 0.4)
    return fig


def _box_with_points(ax: Any, groups: Sequence[np.ndarray], names: Sequence[str]) -> None:
    """Box plots with the individual values jittered on top (deterministic jitter)."""
    rng = np.random.default_rng(0)
    positions = np.arange(1, len(groups) + 1)
    data = [g if g.size else np.array([np.nan]) for g in groups]
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False)
    for pos, g in zip(positions, groups):
        if g.size:
            ax.scatter(pos + rng.uniform(-0.15, 0.15, g.size), g, s=10, alpha=0.6, color=_BAR_COLOUR, zorder=3)
    ax.set_xticks(positions)
    ax.set_xticklabels(list(names))


def dice_boxplot_figure(results: Results) -> Any | None:
    """Box plots of Dice per label (cases as points): a Figure, or None when the results have no Dice."""
    key = results.metric_key("dice")
    if key is None:
        return None
    groups = [np.array([v for _, v in results.values(label, key)], dtype=float) for label in results.labels]
    fig = new_figure(max(4.0, 1.2 * len(groups) + 2.0), 4.0)
    ax = fig.add_subplot()
    _box_with_points(ax, groups, [f"{label}\n(n={g.size})" for label, g in zip(results.labels, groups)])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Dice")
    ax.set_title("Dice per label", fontsize=10)
    return fig


def hd95_figure(results: Results) -> Any | None:
    """Distribution of HD95 (mm) per label, box plots with every case as a point: a Figure, or None without HD95."""
    key = results.metric_key("hd95")
    if key is None:
        return None
    groups = [np.array([v for _, v in results.values(label, key)], dtype=float) for label in results.labels]
    fig = new_figure(max(4.0, 1.2 * len(groups) + 2.0), 4.0)
    ax = fig.add_subplot()
    _box_with_points(ax, groups, [f"{label}\n(n={g.size})" for label, g in zip(results.labels, groups)])
    ax.set_ylabel("HD95 (mm)")
    ax.set_ylim(bottom=0)
    mode = results.hd95_mode
    ax.set_title("HD95 per label" + (f" ({mode})" if mode else ""), fontsize=10)
    return fig


def metric_figures(results: Results) -> dict[str, bytes]:
    """All metric figures the results allow: file name -> PNG bytes.

    Raises:
        InputError: the results hold neither Dice nor HD95 values.
    """
    out = {}
    for name, make in ((DICE_PER_CASE, dice_per_case_figure), (DICE_BOXPLOT, dice_boxplot_figure),
                       (HD95_DISTRIBUTION, hd95_figure)):
        fig = make(results)
        if fig is None:
            logger.info("%s: no %s values; %s not drawn", results.path, "HD95" if name == HD95_DISTRIBUTION
                        else "Dice", name)
            continue
        out[name] = figure_png(fig)
    if not out:
        raise InputError(f"{results.path}: no 'dice' or 'hd95' values to plot (metrics: "
                         f"{', '.join(results.metrics) or 'none'})")
    return out


def write_metric_plots(*, results_json: Path, out_dir: Path) -> list[Path]:
    """Write the metric figures of a ``results.json`` into ``out_dir`` (each file atomically).

    Files: :data:`DICE_PER_CASE`, :data:`DICE_BOXPLOT` (when the results have Dice) and
    :data:`HD95_DISTRIBUTION` (when they have HD95).

    Args:
        results_json: the evaluation results.
        out_dir: output folder (created if missing).

    Returns:
        The written paths.
    """
    written = write_pngs(metric_figures(load_results(results_json)), out_dir)
    logger.info("wrote %d metric plot(s) to %s", len(written), out_dir)
    return written


def write_pngs(figures: dict[str, bytes], out_dir: str | Path) -> list[Path]:
    """Write ``{file name: PNG bytes}`` into ``out_dir``, each file atomically; return the paths."""
    written = []
    for name, png in figures.items():
        path = Path(out_dir) / name
        with atomic_write(path) as tmp:
            tmp.write_bytes(png)
        written.append(path)
    return written
