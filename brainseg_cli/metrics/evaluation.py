"""Per-case and folder-level evaluation (``brainseg evaluate``), results.json and CSV (docs/DEFINITIONS.md §3, §5).

:func:`evaluate_case` scores one prediction against its reference for every requested label and
region; :func:`evaluate_folders` pairs the cases of two folders, scores them (in parallel with
``workers`` > 1), summarises and writes the results.

Speed: all labels' voxel counts come from one ``np.bincount`` over the bounding box of the
foreground (both arrays are 0 outside it); surface distances are computed on the bounding box of
each structure plus one voxel, with a k-d tree over the surface voxels.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli import __version__
from brainseg_cli.errors import ConfigError, GeometryError, InputError, look_up
from brainseg_cli.io import atomic_write
from brainseg_cli.metrics.empty import (
    POLICY_DESCRIPTIONS,
    EmptyPolicy,
    empty_distance_value,
    empty_nsd_value,
    image_diagonal,
)
from brainseg_cli.metrics.lesionwise import BRATS_GLI, LesionWiseParams, both_empty_result, lesion_wise
from brainseg_cli.metrics.overlap import Confusion, label_confusion, overlap_metrics, volumes
from brainseg_cli.metrics.regions import (
    Structure,
    check_regions_defined,
    label_structures,
    parse_label_token,
    resolve_regions,
    structure_mask,
)
from brainseg_cli.metrics.sources import LGG_SPACING, LabelSource, as_label_array, open_source, read_case_pair
from brainseg_cli.metrics.surface import HD95_MODES, bounding_box, surface_distances

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

#: Metric name -> the result columns it adds, in order.
METRICS: dict[str, tuple[str, ...]] = {
    "dice": ("dice",),
    "iou": ("iou",),
    "hd95": ("hd95",),
    "hd": ("hd",),
    "assd": ("assd",),
    "nsd": ("nsd",),
    "sensitivity": ("sensitivity",),
    "specificity": ("specificity",),
    "precision": ("precision",),
    "volume": ("volume_pred_ml", "volume_ref_ml", "volume_diff_ml"),
}
#: Columns added by ``lesion_wise=True``.
LESION_COLUMNS: tuple[str, ...] = ("lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fn", "lesion_fp")
DEFAULT_METRICS: tuple[str, ...] = ("dice", "hd95")
#: Key of the foreground mean in the summary.
FOREGROUND_MEAN = "foreground_mean"
_OVERLAP = ("dice", "iou", "sensitivity", "specificity", "precision")
_SURFACE = ("hd95", "hd", "assd", "nsd")

_DESCRIPTIONS = {
    "dice": "2|P∩G| / (|P|+|G|) (MONAI DiceMetric(ignore_empty=False))",
    "iou": "|P∩G| / |P∪G|",
    "sensitivity": "TP / (TP + FN)",
    "specificity": "TN / (TN + FP) over the whole image",
    "precision": "TP / (TP + FP)",
    "hd": "max of the two directed maxima (MONAI HausdorffDistanceMetric() = medpy hd)",
    "assd": "mean of both directed distance sets pooled (MONAI SurfaceDistanceMetric(symmetric=True) = medpy assd)",
    "nsd": "fraction of both directed distance sets pooled that are <= nsd_tolerance_mm",
    "volume": "mL = voxels x voxel volume / 1000; volume_diff_ml = prediction - reference",
}
_HD95_DESCRIPTIONS = {
    "max": "max of the two directed 95th percentiles, linear interpolation (MONAI HausdorffDistanceMetric(percentile=95))",
    "pooled": "95th percentile of both directed distance sets pooled, linear interpolation (medpy hd95)",
}


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of ``brainseg evaluate``.

    Attributes:
        ref: reference labels: dataset folder, labelsTr folder, flat folder of label files, or a
            Kaggle-LGG folder (used by :func:`evaluate_folders` only).
        pred: predicted labels, same kinds (used by :func:`evaluate_folders` only).
        metrics: metric names from :data:`METRICS`, in column order.
        labels: labels to score (names from ``dataset.json`` or integers); None = every foreground label.
        regions: ``None`` (no regions), ``"dataset"`` (the reference's ``dataset.json`` regions) or ``"brats"`` (WT/TC/ET).
        exclude_labels: labels (names or integers) left out of the foreground mean (still scored).
        hd95_mode: ``"max"`` (MONAI) or ``"pooled"`` (medpy), docs/DEFINITIONS.md §3.
        empty_policy: ``"brats"`` or ``"nan"`` (:mod:`brainseg_cli.metrics.empty`).
        nsd_tolerance: NSD tolerance in mm (only with the ``nsd`` metric; None = 1 mm).
        workers: processes scoring cases in parallel (1 = in this process).
        lesion_wise: add the BraTS 2023 lesion-wise Dice and HD95 (and lesion counts).
        lesion_params: dilation iterations and size threshold of the lesion-wise metrics.
        strict: a reference case without a prediction is an error (otherwise scored as empty).
        output: write results.json here (None: do not write).
        csv: write the per-case CSV here (None: do not write).
    """

    ref: Path | None = None
    pred: Path | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS
    labels: tuple[str | int, ...] | None = None
    regions: str | None = None
    exclude_labels: tuple[str | int, ...] = ()
    hd95_mode: str = "max"
    empty_policy: str = "brats"
    nsd_tolerance: float | None = None
    workers: int = 1
    lesion_wise: bool = False
    lesion_params: LesionWiseParams = BRATS_GLI
    strict: bool = False
    output: Path | None = None
    csv: Path | None = None

    @property
    def policy(self) -> EmptyPolicy:
        """The empty-case policy as an enum."""
        return EmptyPolicy(self.empty_policy)

    @property
    def tolerance_mm(self) -> float:
        """The NSD tolerance in mm (1 mm unless set)."""
        return 1.0 if self.nsd_tolerance is None else float(self.nsd_tolerance)

    @property
    def columns(self) -> list[str]:
        """Result columns after ``case`` and ``label``, in order."""
        cols = [c for m in self.metrics for c in METRICS[m]]
        return cols + (list(LESION_COLUMNS) if self.lesion_wise else [])


def validate_config(config: EvaluateConfig) -> EvaluateConfig:
    """Check option values and combinations; return the config with duplicate metrics removed.

    Raises:
        RegistryError: an unknown metric (lists the valid ones and the closest match).
        ConfigError: an invalid value or combination of options.
    """
    metrics: list[str] = []
    for name in config.metrics:
        look_up(name, METRICS, "metric")
        if name not in metrics:
            metrics.append(name)
    if not metrics and not config.lesion_wise:
        raise ConfigError("--metrics: no metric given")
    if config.hd95_mode not in HD95_MODES:
        raise ConfigError(f"--hd95: unknown mode '{config.hd95_mode}'; valid: {', '.join(HD95_MODES)}")
    if config.empty_policy not in [p.value for p in EmptyPolicy]:
        raise ConfigError(f"--empty: unknown policy '{config.empty_policy}'; valid: brats, nan")
    if config.nsd_tolerance is not None:
        if "nsd" not in metrics:
            raise ConfigError("--nsd-tolerance is given but nsd is not among --metrics")
        if not (math.isfinite(config.nsd_tolerance) and config.nsd_tolerance >= 0):
            raise ConfigError(f"--nsd-tolerance must be a non-negative number of mm, got {config.nsd_tolerance}")
    if config.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {config.workers}")
    if config.regions not in (None, "brats", "dataset"):
        raise ConfigError(f"--regions: unknown value '{config.regions}'; valid: brats, or no value for dataset.json's")
    params = config.lesion_params
    if params.dilation_iterations < 0 or not (math.isfinite(params.min_volume_mm3) and params.min_volume_mm3 >= 0):
        raise ConfigError(f"lesion-wise parameters must be non-negative, got {params}")
    return replace(config, metrics=tuple(metrics))


# ---------------------------------------------------------------------------------------------
# one case


def _structure_row(
    structure: Structure,
    counts: Confusion,
    masks: tuple[np.ndarray, np.ndarray] | None,
    *,
    spacing: Sequence[float],
    diagonal: float,
    config: EvaluateConfig,
) -> dict[str, Any]:
    """The result row of one structure. ``masks`` = (pred, ref) crops; needed only if both are non-empty
    or lesion-wise metrics are asked."""
    policy = config.policy
    row: dict[str, Any] = {"label": structure.name}
    wanted = set(config.metrics)
    if wanted & set(_OVERLAP):
        values = overlap_metrics(counts, policy=policy)
        row.update({k: values[k] for k in _OVERLAP if k in wanted})
    if "volume" in wanted:
        row.update(volumes(counts, spacing=spacing))
    if wanted & set(_SURFACE):
        ref_empty, pred_empty = counts.n_ref == 0, counts.n_pred == 0
        dists = None
        if masks is not None and not (ref_empty or pred_empty):
            dists = surface_distances(masks[0], masks[1], spacing=spacing)
        for name in ("hd95", "hd", "assd"):
            if name not in wanted:
                continue
            if dists is None:
                row[name] = empty_distance_value(policy=policy, ref_empty=ref_empty, pred_empty=pred_empty,
                                                 diagonal=diagonal)
            elif name == "hd95":
                row[name] = dists.hd95(config.hd95_mode)
            elif name == "hd":
                row[name] = dists.hd()
            else:
                row[name] = dists.assd()
        if "nsd" in wanted:
            row["nsd"] = (empty_nsd_value(policy=policy, ref_empty=ref_empty, pred_empty=pred_empty)
                          if dists is None else dists.nsd(config.tolerance_mm))
    if config.lesion_wise:
        if masks is None:  # both masks empty
            lw = both_empty_result(policy=policy)
        else:
            lw = lesion_wise(masks[0], masks[1], spacing=spacing, hd95_mode=config.hd95_mode, policy=policy,
                             params=config.lesion_params, diagonal=diagonal)
        row.update({"lesion_dice": float(lw.dice), "lesion_hd95": float(lw.hd95), "lesion_tp": int(lw.n_tp),
                    "lesion_fn": int(lw.n_fn), "lesion_fp": int(lw.n_fp)})
    return row


def _score_structures(
    pred: np.ndarray,
    ref: np.ndarray,
    structures: Sequence[Structure],
    *,
    spacing: Sequence[float],
    config: EvaluateConfig,
    discover_labels: bool = False,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Score ``structures`` (preceded, with ``discover_labels``, by every nonzero value present).

    Returns:
        ``(rows, present)``: the rows, and the nonzero label values found in either array.
    """
    diagonal = image_diagonal(ref.shape, spacing)
    crop_ok = all(0 not in s.values for s in structures)
    needs_masks = config.lesion_wise or bool(set(config.metrics) & set(_SURFACE))
    if crop_ok:
        margin = 1 + (config.lesion_params.dilation_iterations + 1 if config.lesion_wise else 0)
        either = (ref | pred) if (ref.dtype == pred.dtype and ref.dtype.kind == "u") else ((ref != 0) | (pred != 0))
        box = bounding_box(either, margin=margin)
        if box is None:
            box = tuple(slice(0, 0) for _ in ref.shape)
        pred_c, ref_c = np.ascontiguousarray(pred[box]), np.ascontiguousarray(ref[box])
        outside = ref.size - ref_c.size
    else:
        pred_c, ref_c, outside = pred, ref, 0
    lc = label_confusion(pred_c, ref_c, outside=outside)
    present = [int(v) for v in lc.values if v != 0]
    if discover_labels:
        structures = label_structures(present, names=None) + list(structures)
    rows = []
    done: dict[tuple[int, ...], dict[str, Any]] = {}  # a region equal to a label (ET = {3}) is scored once
    for structure in structures:
        key = tuple(sorted(set(structure.values)))
        if key not in done:
            counts = lc.for_members(structure.values)
            masks = None
            if needs_masks and (counts.n_pred or counts.n_ref):
                masks = (structure_mask(pred_c, structure.values), structure_mask(ref_c, structure.values))
            done[key] = _structure_row(structure, counts, masks, spacing=spacing, diagonal=diagonal, config=config)
        rows.append({**done[key], "label": structure.name})
    return rows, present


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float],
    labels: Mapping[str, int] | None,
    regions: Mapping[str, Sequence[int]] | None = None,
    config: EvaluateConfig = EvaluateConfig(),
) -> list[dict[str, Any]]:
    """Score one prediction against its reference for every label and region.

    Args:
        pred: predicted integer labels ``(X, Y, Z)`` (or ``(X, Y)``), non-negative.
        ref: reference integer labels, same shape and grid.
        spacing: voxel size in mm per axis (the reference's), same axis order.
        labels: label name -> value to score (row names are the names); None = every nonzero value
            found in either array, named by its value (``"1"``).
        regions: region name -> label values (e.g. :data:`~brainseg_cli.metrics.regions.BRATS_REGIONS`).
        config: metrics, HD95 mode, empty policy, NSD tolerance, lesion-wise switch.

    Returns:
        One dict per label (in label order) then per region: ``{"label": name, <column>: value}``
        with the columns of ``config.columns``; NaN where undefined.

    Raises:
        GeometryError: the shapes differ.
        InputError: the arrays are not non-negative integer labels.
    """
    pred = as_label_array(pred, what="prediction")
    ref = as_label_array(ref, what="reference")
    if pred.shape != ref.shape:
        raise GeometryError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing) != ref.ndim:
        raise GeometryError(f"spacing {tuple(spacing)} does not match a {ref.ndim}-D image")
    structures = [] if labels is None else label_structures(labels.values(), names=labels)
    structures += [Structure(name=str(k), values=tuple(int(v) for v in vals), is_region=True)
                   for k, vals in (regions or {}).items()]
    rows, _ = _score_structures(pred, ref, structures, spacing=spacing, config=config,
                                discover_labels=labels is None)
    return rows


# ---------------------------------------------------------------------------------------------
# folders


@dataclass(frozen=True)
class _CaseTask:
    case: str
    ref: LabelSource
    pred: LabelSource | None
    structures: tuple[Structure, ...]
    config: EvaluateConfig
    discover_labels: bool
    defined_values: tuple[int, ...] | None = None


@dataclass(frozen=True)
class _CaseOutcome:
    case: str
    rows: list[dict[str, Any]]
    values: tuple[int, ...]
    n_voxels: int
    spacing: tuple[float, ...]


def undefined_labels(array: np.ndarray, defined: Sequence[int]) -> dict[int, int]:
    """Label values in ``array`` that are not in ``defined``, with their voxel counts (``{}`` if none).

    Cheap for the common case (values 0..K all defined): only the minimum and maximum are read.
    """
    known = {int(v) for v in defined}
    if array.size == 0:
        return {}
    lo, hi = int(array.min()), int(array.max())
    if lo >= 0 and set(range(lo, hi + 1)) <= known:
        return {}
    values, counts = np.unique(array, return_counts=True)
    return {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist()) if int(v) not in known}


def _run_case(task: _CaseTask) -> _CaseOutcome:
    """Read and score one case (runs in a worker process when ``workers`` > 1)."""
    ref_image, pred_array = read_case_pair(task.case, task.ref, task.pred)
    if task.pred is not None and task.defined_values is not None:
        undefined = undefined_labels(pred_array, task.defined_values)
        if undefined:
            listing = ", ".join(f"{v} ({n} voxels)" for v, n in undefined.items())
            raise InputError(f"case {task.case}: prediction {task.pred.cases[task.case]} holds label(s) {listing} that "
                             f"the reference {task.ref.root} does not define (labels {list(task.defined_values)}); "
                             "a label the reference cannot hold would be scored as nothing")
    spacing = tuple(ref_image.spacing)
    rows, present = _score_structures(pred_array, ref_image.array, task.structures, spacing=spacing,
                                      config=task.config, discover_labels=task.discover_labels)
    return _CaseOutcome(case=task.case, rows=rows, values=tuple(present), n_voxels=int(ref_image.array.size),
                        spacing=spacing)


@dataclass
class EvaluationResult:
    """The outcome of :func:`evaluate_folders`.

    Attributes:
        rows: one dict per case and structure: ``{"case", "label", <columns>...}``; NaN where undefined.
        columns: metric columns after ``case`` and ``label``.
        summary: structure name (and ``"foreground_mean"``) -> column -> {mean, std, median, min, max, n, n_nan}.
        missing: reference cases without a prediction (scored as empty predictions).
        extra: prediction cases without a reference (not scored).
        definitions: how every number was computed (written into results.json).
        empty_policy: ``"brats"`` or ``"nan"``.
        labels: scored label name -> value.
        regions: scored region name -> label values.
        foreground_labels: label names averaged into the foreground mean.
    """

    rows: list[dict[str, Any]]
    columns: list[str]
    summary: dict[str, dict[str, dict[str, float | int | None]]]
    missing: list[str]
    extra: list[str]
    definitions: dict[str, Any]
    empty_policy: str
    labels: dict[str, int] = field(default_factory=dict)
    regions: dict[str, list[int]] = field(default_factory=dict)
    foreground_labels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The results.json content (docs/DEFINITIONS.md §5), NaN replaced by None."""
        data = {
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "definitions": self.definitions,
            "empty_policy": self.empty_policy,
            "labels": self.labels,
            "regions": self.regions,
            "cases": self.rows,
            "summary": self.summary,
            "missing": self.missing,
            "extra": self.extra,
        }
        return _json_safe(data)

    def to_json(self) -> str:
        """results.json as text (no NaN literals: NaN is null)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def to_csv(self) -> str:
        """The per-case CSV: columns ``case, label, <metrics...>``; NaN is an empty cell."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", "label", *self.columns])
        for row in self.rows:
            writer.writerow([row["case"], row["label"], *(_csv_cell(row.get(c)) for c in self.columns)])
        return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, (np.floating,)):
        return _json_safe(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return "" if math.isnan(value) else repr(value)
    return str(value)


def summary_stats(values: Iterable[float]) -> dict[str, float | int]:
    """Mean, std (population, ddof=0), median, min, max over the non-NaN values; n and n_nan.

    Returns:
        ``{"mean", "std", "median", "min", "max", "n", "n_nan"}``; the statistics are NaN when every value is NaN.
    """
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    n_nan = int(arr.size - finite.size)
    if finite.size == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "median": nan, "min": nan, "max": nan, "n": 0, "n_nan": n_nan}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "median": float(np.median(finite)),
            "min": float(finite.min()), "max": float(finite.max()), "n": int(finite.size), "n_nan": n_nan}


def summarize(
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str],
    structures: Sequence[str],
    foreground: Sequence[str],
) -> dict[str, dict[str, dict[str, float | int]]]:
    """Summary statistics per structure and column, plus the foreground mean.

    Args:
        rows: per-case rows with ``case``, ``label`` and the columns.
        columns: metric columns to summarise.
        structures: structure names in output order.
        foreground: label names averaged into ``"foreground_mean"`` (background and excluded labels
            left out): per case, the mean over these labels (NaN labels left out), then statistics
            over cases. Omitted when empty.

    Returns:
        ``{structure: {column: stats}}`` (see :func:`summary_stats`).
    """
    by_structure: dict[str, list[Mapping[str, Any]]] = {s: [] for s in structures}
    for row in rows:
        by_structure.setdefault(row["label"], []).append(row)
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for name in structures:
        out[name] = {c: summary_stats(r[c] for r in by_structure[name]) for c in columns}
    if foreground:
        fg = set(foreground)
        per_case: dict[str, dict[str, list[float]]] = {}
        for row in rows:
            if row["label"] in fg:
                entry = per_case.setdefault(row["case"], {c: [] for c in columns})
                for c in columns:
                    entry[c].append(float(row[c]))
        out[FOREGROUND_MEAN] = {}
        for c in columns:
            means = []
            for entry in per_case.values():
                vals = np.asarray(entry[c], dtype=np.float64)
                vals = vals[~np.isnan(vals)]
                means.append(float(vals.mean()) if vals.size else float("nan"))
            out[FOREGROUND_MEAN][c] = summary_stats(means)
    return out


def _definitions(config: EvaluateConfig, *, lgg: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"hd95_mode": config.hd95_mode}
    for name in config.metrics:
        if name == "hd95":
            d["hd95"] = f"{config.hd95_mode}: {_HD95_DESCRIPTIONS[config.hd95_mode]}"
        else:
            d[name] = _DESCRIPTIONS[name]
    if "nsd" in config.metrics:
        d["nsd_tolerance_mm"] = config.tolerance_mm
    d["surface"] = ("mask XOR its binary erosion with the face-connected cross "
                    "(scipy generate_binary_structure(ndim, 1)); voxels on the image border count as surface")
    d["distances"] = "Euclidean distance in mm between surface voxel centres, float64"
    d["spacing_source"] = (f"assumed {LGG_SPACING} mm: Kaggle-LGG TIFF slices carry no spacing" if lgg
                           else "the reference image header (prediction grids must match it)")
    d["empty_diagonal"] = "D = sqrt(sum((shape * spacing)^2)) mm of the reference grid"
    d["empty_policy"] = POLICY_DESCRIPTIONS[config.policy]
    if config.lesion_wise:
        p = config.lesion_params
        d["lesion_wise"] = (
            f"BraTS 2023 rules: 26-connected lesions; reference dilated {p.dilation_iterations}x with the "
            f"18-connected element to group lesions and match predicted components; lesions <= "
            f"{p.min_volume_mm3:g} mm3 left out; missed and false-positive lesions score Dice 0 and HD95 D; "
            f"score = sum over lesions / (#reference lesions + #false positives); lesion HD95 uses hd95_mode"
        )
    if lgg:
        d["slices"] = "Kaggle-LGG slices of a patient are stacked into one volume before scoring (per-patient metrics)"
    d["nan"] = "undefined values are null in JSON and empty in CSV; summaries leave them out and count them in n_nan"
    d["std"] = "population standard deviation (ddof=0)"
    d[FOREGROUND_MEAN] = ("per case, the mean over foreground labels (background and excluded labels left out, "
                          "regions not included), then statistics over cases")
    return d


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def evaluate_folders(
    *,
    config: EvaluateConfig,
    progress: Callable[[str, int, int], None] | None = None,
) -> EvaluationResult:
    """Pair reference and prediction cases by id, score them, summarise, and write the outputs.

    Args:
        config: the options; ``ref`` and ``pred`` are required.
        progress: optional callback ``(description, done, total)`` after each case.

    Returns:
        The :class:`EvaluationResult` (also written to ``config.output`` / ``config.csv`` when set).

    Raises:
        ConfigError: invalid options; a label or region the data does not define.
        InputError: unreadable inputs, no reference cases, or (``strict``) a missing prediction.
        GeometryError: a prediction's grid differs from its reference's (names the case).
    """
    config = validate_config(config)
    if config.ref is None or config.pred is None:
        raise ConfigError("evaluate needs both a reference (--ref) and a prediction (--pred) folder")
    ref_src = open_source(Path(config.ref), role="reference")
    pred_src = open_source(Path(config.pred), role="prediction")
    check_output_paths({"-o": config.output, "--csv": config.csv}, sources=(ref_src, pred_src))
    logger.info("reference: %s %s; prediction: %s %s", config.ref, ref_src.description, config.pred,
                pred_src.description)
    if ref_src.kind != pred_src.kind:
        kinds = {"lgg": "Kaggle-LGG mask slices", "volumes": "label volumes"}
        raise InputError(f"reference {config.ref} holds {kinds[ref_src.kind]} but prediction {config.pred} "
                         f"holds {kinds[pred_src.kind]}")
    if not ref_src.cases:
        raise InputError(f"reference {config.ref}: no cases")
    missing = sorted(set(ref_src.cases) - set(pred_src.cases))
    extra = sorted(set(pred_src.cases) - set(ref_src.cases))
    if missing:
        if config.strict:
            raise InputError(f"{len(missing)} reference case(s) have no prediction in {config.pred}, "
                             f"e.g. {missing[0]} (--strict)")
        logger.warning("%d reference case(s) have no prediction (scored as empty predictions): %s",
                       len(missing), ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if extra:
        logger.warning("%d prediction(s) have no reference (not scored): %s", len(extra),
                       ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))

    names = ref_src.labels
    source = f"reference {config.ref}"
    if names is not None:
        check_label_schemes(names, Path(config.pred), reference=Path(config.ref))
    requested = None
    if config.labels is not None:
        requested = [parse_label_token(t, labels=names, what="--labels") for t in config.labels]
    excluded = [parse_label_token(t, labels=names, what="--exclude-label") for t in config.exclude_labels]
    if names is not None:
        defined = sorted(set(names.values()))
        label_values = requested if requested is not None else [v for v in defined if v != 0]
        unknown = sorted(set(label_values) - set(defined))
        if unknown:
            raise ConfigError(f"--labels: {unknown} not defined by {source} (labels: "
                              f"{', '.join(f'{k}={v}' for k, v in names.items())})")
        label_list = label_structures(label_values, names=names)
        regions = resolve_regions(config.regions, dataset_regions=ref_src.regions, defined_values=defined,
                                  source=source)
    else:
        label_list = label_structures(requested, names=None) if requested is not None else []
        regions = resolve_regions(config.regions, dataset_regions=None, defined_values=None, source=source)
    discover = names is None and requested is None
    clash = sorted({s.name for s in label_list} & {s.name for s in regions})
    if clash:
        raise ConfigError(f"region '{clash[0]}' has the name of a label in {source}; rename one of them")

    if not discover:
        _check_excluded(excluded, label_list)

    tasks = [_CaseTask(case=case, ref=ref_src, pred=pred_src if case in pred_src.cases else None,
                       structures=tuple(label_list + regions), config=config, discover_labels=discover,
                       defined_values=tuple(sorted(set(names.values()))) if names is not None else None)
             for case in sorted(ref_src.cases)]
    outcomes = _run_tasks(tasks, workers=config.workers, progress=progress)

    if names is None:
        found = sorted({v for o in outcomes for v in o.values})
        if discover:
            label_list = label_structures(found, names=None)
        else:
            absent = sorted({s.values[0] for s in label_list} - set(found))
            if absent:
                raise ConfigError(f"--labels: label(s) {absent} occur in no reference or prediction under {source}")
        check_regions_defined(regions, defined_values=found,
                              source=f"{source} (no dataset.json: the labels found in the data)")

    _check_excluded(excluded, label_list)

    structures = label_list + regions
    rows: list[dict[str, Any]] = []
    for outcome in sorted(outcomes, key=lambda o: o.case):
        by_name = {r["label"]: r for r in outcome.rows}
        for s in structures:
            if s.name not in by_name:  # a label absent from both arrays of this case: both empty
                by_name[s.name] = _structure_row(s, Confusion(0, 0, 0, outcome.n_voxels), None,
                                                 spacing=outcome.spacing, diagonal=0.0, config=config)
            rows.append({"case": outcome.case, **by_name[s.name]})

    excluded_set = set(excluded)
    foreground = [s.name for s in label_list if s.values[0] != 0 and s.values[0] not in excluded_set]
    columns = config.columns
    result = EvaluationResult(
        rows=rows,
        columns=columns,
        summary=summarize(rows, columns=columns, structures=[s.name for s in structures], foreground=foreground),
        missing=missing,
        extra=extra,
        definitions=_definitions(config, lgg=ref_src.kind == "lgg"),
        empty_policy=config.empty_policy,
        labels={s.name: s.values[0] for s in label_list},
        regions={s.name: list(s.values) for s in regions},
        foreground_labels=foreground,
    )
    if config.output is not None:
        _write_text(Path(config.output), result.to_json())
    if config.csv is not None:
        _write_text(Path(config.csv), result.to_csv())
    return result


def check_label_schemes(reference_labels: Mapping[str, int], pred: Path, *, reference: Path) -> None:
    """Refuse predictions whose label values mean other things than the reference's.

    ``brainseg predict`` records the model's label names in ``predict_config.json``; when the
    predictions hold the model's values (``labels: "model"``) and a value is named differently in
    the reference (e.g. BraTS 2012's 2 "active tumour" against the canonical 2 "non-enhancing
    tumour"), the two schemes cannot be compared value by value. Folders without that file are not
    checked.

    Raises:
        InputError: names the value, both names and both folders.
    """
    config_path = pred / "predict_config.json"
    if not config_path.is_file():
        return
    try:
        written = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    model_labels = written.get("model_labels") if isinstance(written, Mapping) else None
    if written.get("labels") != "model" or not isinstance(model_labels, Mapping):
        return
    by_value_ref = {int(v): str(k) for k, v in reference_labels.items()}
    for name, value in model_labels.items():
        ref_name = by_value_ref.get(int(value))
        if ref_name is not None and int(value) != 0 and ref_name.casefold() != str(name).casefold():
            raise InputError(f"prediction {pred} was written by a model whose label {value} is '{name}', but label "
                             f"{value} of the reference {reference} is '{ref_name}': the two label schemes differ "
                             "(convert both with the same scheme, or predict with --labels source against the source's labels)")


def check_output_paths(outputs: Mapping[str, Path | None], *, sources: Sequence[LabelSource]) -> None:
    """Refuse output files that would overwrite an input, or each other.

    Args:
        outputs: option name -> the file it names (None: not written).
        sources: the reference and prediction sources (:func:`open_source`).

    Raises:
        ConfigError: two options name the same file.
        InputError: an output names a label file of a source, its ``dataset.json``, or a file inside a
            Kaggle-LGG patient folder of a source.
    """
    given = {option: Path(path).resolve() for option, path in outputs.items() if path is not None}
    seen: dict[Path, str] = {}
    for option, path in given.items():
        if path in seen:
            raise ConfigError(f"{seen[path]} and {option} both name {path}; give two different files")
        seen[path] = option
    for src in sources:
        role = "reference" if src is sources[0] else "prediction"
        inputs = {Path(p).resolve() for p in src.cases.values()}
        inputs |= {(folder / "dataset.json").resolve() for folder in (Path(src.root), Path(src.root).parent)}
        for option, path in given.items():
            inside_patient = src.kind == "lgg" and any(path.is_relative_to(folder) for folder in inputs)
            if path in inputs or inside_patient:
                raise InputError(f"{option} {path}: this is an input of the {role} {src.root}; "
                                 "writing the results there would overwrite it")


def _check_excluded(excluded: Sequence[int], labels: Sequence[Structure]) -> None:
    scored = {s.values[0] for s in labels}
    stray = sorted(set(excluded) - scored)
    if stray:
        raise ConfigError(f"--exclude-label: label(s) {stray} are not among the scored labels {sorted(scored)}")


def _run_tasks(tasks: Sequence[_CaseTask], *, workers: int,
               progress: Callable[[str, int, int], None] | None) -> list[_CaseOutcome]:
    total = len(tasks)
    outcomes: list[_CaseOutcome] = []
    if workers <= 1 or total <= 1:
        for i, task in enumerate(tasks, start=1):
            outcomes.append(_run_case(task))
            if progress is not None:
                progress("evaluating", i, total)
        return outcomes
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(workers, total)) as pool:
        futures = [pool.submit(_run_case, task) for task in tasks]
        try:
            for i, future in enumerate(as_completed(futures), start=1):
                outcomes.append(future.result())
                if progress is not None:
                    progress("evaluating", i, total)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return outcomes
