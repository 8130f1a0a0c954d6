"""Validation during training, and the post-processing decision at its end.

Validation predicts each held-out case *in the preprocessed space* (the plan's spacing, crop and
normalisation; the same space the network trains in) with the sliding-window code of ``predict``
(:func:`brainseg_cli.inference.sliding_window_predict`), turns probabilities into labels with
:func:`brainseg_cli.inference.probabilities_to_labels`, and scores them with the Dice of
:mod:`brainseg_cli.metrics.overlap` (docs/DEFINITIONS.md §3, ``brats`` empty policy: both empty = 1).

*Entities* are what Dice is reported for: the foreground labels (``{name: [value]}``) of a softmax
model, or the regions (``{"WT": [1, 2, 3], ...}``) of a region-based (sigmoid) model. The mean
foreground Dice is the mean over entities of the per-entity mean over cases.

The validation loss is the training loss (without deep supervision) evaluated on the whole
sliding-window prediction: the probabilities are turned back into logits (``log p`` for softmax,
``log(p / (1 - p))`` for sigmoid, both exact inverses of the activation) so that the same loss
module applies.

Post-processing decision (:func:`decide_postprocessing`): labels are tried one at a time, in label
order; keep-largest-component for a label is kept switched on only when it raises the mean
foreground Dice over the validation cases and lowers no entity's Dice (nnU-Net's rule, per label).

Region growing thresholds (:func:`decide_region_thresholds`, region-based models only), decided
after post-processing on the labels it gives, as ``predict`` applies them: each region may grow
from its 0.5 segmentation into the connected voxels above a lower threshold
(:func:`brainseg_cli.inference.postprocess.grow_regions`, hysteresis). The threshold is chosen from
:data:`THRESHOLD_CANDIDATES`, one region at a time in output order (WT, TC, ET), as the candidate
with the highest mean foreground Dice; ties, and gains of at most :data:`MIN_GAIN`, keep the value
nearest 0.5. None is above 0.5: for calibrated probabilities the threshold that maximises the
expected F1 score (= Dice) is half the best F1 score (Lipton, Elkan and Narayanaswamy,
"Thresholding classifiers to maximize F1 score", ECML PKDD 2014). Growing, not a plain lower
threshold, because a faint blob away from the tumour must not come in: on a BraTS 2-D CPU run a plain
threshold of 0.1 (chosen on a validation case with a large tumour) made such a blob the largest
component, and keep-largest-component then removed the smaller held-out tumour entirely.

Minimum region volumes (:func:`decide_min_volumes`, region-based models only, decided last on the
grown labels): below its minimum a predicted region is judged absent and takes the enclosing region's
label (:func:`brainseg_cli.inference.postprocess.remove_small_regions`). A region absent from a case
scores Dice 1 when nothing is predicted and 0 for a single false-positive voxel, so the minimum is set
as high as the evidence allows: of 0 and :data:`MIN_VOLUME_CANDIDATES` (mm³) up to the cap, the one with
the highest mean foreground Dice over the validation cases, ties going to the largest (nnU-Net's BraTS
rule chooses its enhancing-tumour threshold on the cross-validation's Dice the same way). The cap is
:data:`MIN_VOLUME_FRACTION` of the region's :data:`MIN_VOLUME_QUANTILE`-th percentile volume over the
training references that hold it, so a region smaller than that is never removed, whatever the
validation cases hold. Removal lowers a case's Dice only where the reference holds the region and the
prediction overlaps it (a small, correctly found region), and raises it only where the reference lacks
the region, so without such cases every candidate ties and the largest one under the cap is chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from brainseg_cli.data.plan_schema import Plan, as_plan
from brainseg_cli.errors import ConfigError
from brainseg_cli.inference import apply_largest_component, probabilities_to_labels, sliding_window_predict
from brainseg_cli.inference.postprocess import (
    ALL_FOREGROUND,
    REGION_THRESHOLD,
    check_min_volumes,
    check_thresholds,
    grow_regions,
    remove_small_regions,
)
from brainseg_cli.metrics.overlap import label_confusion, overlap_metrics

logger = logging.getLogger(__name__)

#: Window overlap used for validation (nnU-Net validates with step 0.5 as well).
VAL_OVERLAP = 0.5

#: Smallest mean-Dice gain that switches post-processing on (guards against float noise).
MIN_GAIN = 1e-6

#: Thresholds :func:`decide_region_thresholds` chooses each region's from (0.5 = no change; none
#: above 0.5, see the module docstring).
THRESHOLD_CANDIDATES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)

#: Minimum region volumes (mm³) :func:`decide_min_volumes` chooses from (0 = never removed).
MIN_VOLUME_CANDIDATES: tuple[float, ...] = (50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0)

#: A region's minimum volume is at most this fraction of its :data:`MIN_VOLUME_QUANTILE`-th percentile
#: reference volume over the training cases that hold it.
MIN_VOLUME_FRACTION = 0.25

#: Percentile of the training cases' reference volumes the cap of a minimum volume is taken from.
MIN_VOLUME_QUANTILE = 10.0


def validation_entities(
    *, labels: Mapping[str, int], regions: Mapping[str, Sequence[int]] | None, region_based: bool
) -> dict[str, list[int]]:
    """The entities Dice is reported for, in output order.

    Args:
        labels: dataset labels, name -> value (``"background": 0`` included).
        regions: region name -> label values (used when ``region_based``).
        region_based: the model has one sigmoid output per region.

    Returns:
        ``{name: [label values]}``: the regions for a region-based model, else each foreground
        label on its own, sorted by value.

    Raises:
        ConfigError: a region-based model without regions.
    """
    if region_based:
        if not regions:
            raise ConfigError("a region-based plan needs regions, but none are defined")
        return {name: sorted(int(v) for v in values) for name, values in regions.items()}
    return {name: [int(v)] for name, v in sorted(labels.items(), key=lambda kv: kv[1]) if int(v) != 0}


def case_dice(pred: np.ndarray, ref: np.ndarray, entities: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Dice of each entity for one case.

    Args:
        pred: predicted label map, e.g. ``(X, Y, Z)``.
        ref: reference label map, same shape.
        entities: ``{name: [label values]}``.

    Returns:
        ``{name: dice}`` in ``entities`` order (1.0 where both masks are empty).
    """
    confusion = label_confusion(pred, ref)
    return {name: overlap_metrics(confusion.for_members(members))["dice"] for name, members in entities.items()}


def mean_dice(per_case: Sequence[Mapping[str, float]], names: Sequence[str]) -> dict[str, float]:
    """Per-entity mean over cases (NaN for no cases)."""
    return {n: float(np.mean([c[n] for c in per_case])) if per_case else float("nan") for n in names}


def predict_preprocessed(
    network: nn.Module,
    image: np.ndarray | torch.Tensor,
    *,
    patch_size: Sequence[int],
    activation: str,
    precision: str = "fp32",
    device: torch.device | str | None = None,
    slice_axis: int | None = None,
    overlap: float = VAL_OVERLAP,
    batch_size: int = 1,
    slice_context: int = 0,
) -> torch.Tensor:
    """Sliding-window probabilities of one preprocessed case (``predict``'s sliding window).

    Args:
        network: the segmentation network (on ``device``).
        image: ``(C, X, Y, Z)`` preprocessed volume (or ``(C, X, Y)`` for 2-D data).
        patch_size: the plan's patch size (3 ints, or 2 for a 2-D network).
        activation: ``softmax`` or ``sigmoid``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        device: where the network runs.
        slice_axis: for a 2-D network on a 3-D volume, the spatial axis (0, 1 or 2) sliced along.
        overlap: window overlap.
        batch_size: windows per network call.
        slice_context: the plan's 2.5-D slice context (neighbours on each side given as channels).

    Returns:
        ``(K, *spatial)`` float32 probabilities on the CPU.
    """
    image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    sliced = len(patch_size) == 2 and image.ndim == 4
    if sliced and slice_axis is None:
        raise ConfigError("a 2-D network on a 3-D volume needs the plan's slice_axis")
    return sliding_window_predict(network, image, patch_size=patch_size, overlap=overlap, precision=precision,
                                  device=device, activation=activation, batch_size=batch_size,
                                  slice_axis=int(slice_axis) if sliced else None,
                                  slice_context=int(slice_context) if sliced else 0)


def probabilities_to_logits(probs: torch.Tensor, *, activation: str) -> torch.Tensor:
    """The logits whose softmax (or sigmoid) are ``probs`` (clamped away from 0 and 1)."""
    eps = 1e-6
    p = probs.clamp(eps, 1.0 - eps)
    if activation == "softmax":
        return torch.log(p)
    return torch.log(p) - torch.log1p(-p)


@dataclass
class ValidationResult:
    """The outcome of validating on all held-out cases.

    Attributes:
        per_case: ``{case: {entity: dice}}``.
        mean_per_entity: ``{entity: mean Dice over cases}``.
        mean: mean foreground Dice (mean of ``mean_per_entity``).
        loss: mean validation loss over cases (NaN without a loss function).
        predictions: ``{case: label map}`` (kept for the post-processing decision).
        probabilities: ``{case: (K, *spatial) float16}`` when asked for (the threshold decision).
    """

    per_case: dict[str, dict[str, float]]
    mean_per_entity: dict[str, float]
    mean: float
    loss: float
    predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def validate(
    network: nn.Module,
    cases: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    plan: Plan | Mapping[str, Any],
    entities: Mapping[str, Sequence[int]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    target_fn: Callable[[np.ndarray], torch.Tensor] | None = None,
    precision: str = "fp32",
    device: torch.device | str | None = None,
    keep_predictions: bool = True,
    keep_probabilities: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ValidationResult:
    """Predict and score every validation case.

    Args:
        network: the network (its train/eval mode is restored afterwards).
        cases: ``(case, image (C, X, Y, Z) float32, label (X, Y, Z) uint8)`` in the preprocessed space.
        plan: the plan (``patch_size``, ``region_based``, ``regions``, ``slice_axis``).
        entities: from :func:`validation_entities`.
        loss_fn: the loss (logits ``(1, K, *spatial)``, target) -> scalar, or None for no loss.
        target_fn: label map -> the loss target with a batch axis (labels ``(1, *spatial)`` long,
            or region masks ``(1, R, *spatial)`` float); required with ``loss_fn``.
        precision: autocast precision of the forward passes.
        device: where the network runs.
        keep_predictions: keep the label maps in the result.
        keep_probabilities: keep the probabilities in the result (float16, to halve the memory).
        progress: called with (done, total) after each case (total -1 when unknown).

    Returns:
        The :class:`ValidationResult`.
    """
    plan = as_plan(plan)
    region_based = plan.region_based
    activation = "sigmoid" if region_based else "softmax"
    region_lists = plan.region_lists if region_based else None
    per_case: dict[str, dict[str, float]] = {}
    predictions: dict[str, np.ndarray] = {}
    probabilities: dict[str, np.ndarray] = {}
    losses: list[float] = []
    case_list = list(cases)
    for i, (case, image, label) in enumerate(case_list):
        probs = predict_preprocessed(network, image, patch_size=plan.patch_size, activation=activation,
                                     precision=precision, device=device, slice_axis=plan.slice_axis,
                                     batch_size=plan.batch_size, slice_context=plan.slice_context)
        pred = probabilities_to_labels(probs, regions=region_lists)
        per_case[case] = case_dice(pred, label, entities)
        if loss_fn is not None and target_fn is not None:
            with torch.no_grad():
                logits = probabilities_to_logits(probs, activation=activation)[None]
                losses.append(float(loss_fn(logits, target_fn(label))))
        if keep_predictions:
            predictions[case] = pred
        if keep_probabilities:
            probabilities[case] = probs.numpy().astype(np.float16)
        if progress is not None:
            progress(i + 1, len(case_list))
    names = list(entities)
    means = mean_dice(list(per_case.values()), names)
    mean = float(np.mean(list(means.values()))) if means else float("nan")
    loss = float(np.mean(losses)) if losses else float("nan")
    return ValidationResult(per_case=per_case, mean_per_entity=means, mean=mean, loss=loss, predictions=predictions,
                            probabilities=probabilities)


@dataclass(frozen=True)
class ThresholdDecision:
    """The outcome of :func:`decide_region_thresholds`.

    Attributes:
        thresholds: ``{region name: threshold}`` in output order (the checkpoint's
            ``region_thresholds``).
        dice_before: per-entity mean Dice without growing.
        dice_after: per-entity mean Dice grown at the chosen thresholds.
        trials: ``{region name: {threshold: mean foreground Dice}}``, for the log.
    """

    thresholds: dict[str, float]
    dice_before: dict[str, float]
    dice_after: dict[str, float]
    trials: dict[str, dict[float, float]]


def decide_region_thresholds(
    probabilities: Mapping[str, np.ndarray],
    predictions: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    *,
    regions: Mapping[str, Sequence[int]],
    candidates: Sequence[float] = THRESHOLD_CANDIDATES,
) -> ThresholdDecision:
    """Choose each region's growing threshold on the validation cases (rule in the module docstring).

    Regions are decided in output order, each with the earlier ones grown at their chosen
    thresholds and the later ones at 0.5 (not grown). A candidate replaces the current threshold
    only when it raises the mean foreground Dice (mean over regions of the mean over cases) by more
    than :data:`MIN_GAIN`; candidates are tried from the nearest to 0.5 outwards, so a tie keeps the
    value nearest 0.5.

    Args:
        probabilities: ``{case: (R, *spatial)}`` sigmoid probabilities, one channel per region in
            ``regions`` order.
        predictions: ``{case: label map}`` the regions grow from: the labels at 0.5 after the
            post-processing decided for them.
        references: ``{case: reference label map}`` (same keys; the spatial shape of the probabilities).
        regions: ordered ``{name: [label values]}`` (largest region first).
        candidates: thresholds to try, each in (0, 0.5].

    Returns:
        The :class:`ThresholdDecision` (every region at 0.5 when there are no cases).

    Raises:
        ConfigError: a case without a reference or prediction, a probability array with the wrong
            channel count or shape, or a candidate outside (0, 0.5].
    """
    names = list(regions)
    region_lists = [list(v) for v in regions.values()]
    check_thresholds(candidates, count=len(candidates), what="threshold candidates")
    cases = sorted(probabilities)
    for case in cases:
        for what, table in (("reference", references), ("predicted", predictions)):
            if case not in table:
                raise ConfigError(f"threshold decision: no {what} label map for validation case '{case}'")
        probs, ref = probabilities[case], references[case]
        if probs.shape[0] != len(names) or probs.shape[1:] != ref.shape:
            raise ConfigError(f"threshold decision: case '{case}' has probabilities of shape {probs.shape} "
                              f"for {len(names)} regions and a reference of shape {ref.shape}")
    ordered = sorted({float(c) for c in candidates} | {REGION_THRESHOLD}, key=lambda c: (abs(c - REGION_THRESHOLD), c))

    def score(cuts: Sequence[float]) -> dict[str, float]:
        per_case = [case_dice(grow_regions(predictions[c], probabilities[c], regions=region_lists, thresholds=cuts),
                              references[c], regions) for c in cases]
        return mean_dice(per_case, names)

    cuts, before, current, trials = _greedy_per_region(
        names, start=REGION_THRESHOLD, candidates=lambda name: ordered, score=score,
        takes=lambda new, best: new > best + MIN_GAIN, search=bool(cases))
    trials = {name: dict(sorted(tried.items())) for name, tried in trials.items()}
    for i, name in enumerate(trials):
        logger.info("region threshold of '%s': %.2f (mean validation Dice %s)", name, cuts[i],
                    ", ".join(f"{t:.1f}: {d:.4f}" for t, d in trials[name].items()))
    return ThresholdDecision(thresholds=dict(zip(names, cuts)), dice_before=before, dice_after=current, trials=trials)


def _greedy_per_region(
    names: Sequence[str], *, start: float, candidates: Callable[[str], Iterable[float]],
    score: Callable[[Sequence[float]], dict[str, float]], takes: Callable[[float, float], bool], search: bool = True,
) -> tuple[list[float], dict[str, float], dict[str, float], dict[str, dict[float, float]]]:
    """One value per region, decided in output order with the earlier regions at their chosen values.

    Every region starts at ``start``; each candidate of ``candidates(name)`` is scored with the others
    fixed and replaces the current value when ``takes(its mean foreground Dice, the best so far)``.

    Args:
        score: values (one per region) -> per-entity mean Dice over the validation cases.
        search: False (no validation cases): every region keeps ``start``, nothing is tried.

    Returns:
        ``(values, Dice at the start, Dice at the chosen values, {region: {value: mean Dice}})``.
    """
    chosen = [start] * len(names)
    before = score(chosen)
    current = dict(before)
    trials: dict[str, dict[float, float]] = {}
    for i, name in enumerate(names if search else ()):
        best = float(np.mean(list(current.values())))
        tried = {float(start): best}
        for cand in candidates(name):
            if cand in tried:
                continue
            trial = [*chosen[:i], cand, *chosen[i + 1:]]
            result = score(trial)
            tried[cand] = float(np.mean(list(result.values())))
            if takes(tried[cand], best):
                best, chosen, current = max(best, tried[cand]), trial, result
        trials[name] = tried
    return chosen, before, current, trials


def min_volume_caps(volumes: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The largest minimum volume each region may get, from the training cases' reference volumes.

    Args:
        volumes: ``{region name: [reference volume of each training case, mm³]}`` (0 where a case
            lacks the region).

    Returns:
        ``{region name: cap in mm³}``: :data:`MIN_VOLUME_FRACTION` of the :data:`MIN_VOLUME_QUANTILE`-th
        percentile of the non-zero volumes (linear interpolation); 0 where no case holds the region.
    """
    caps = {}
    for name, values in volumes.items():
        held = [float(v) for v in values if float(v) > 0]
        caps[name] = MIN_VOLUME_FRACTION * float(np.percentile(held, MIN_VOLUME_QUANTILE)) if held else 0.0
    return caps


@dataclass(frozen=True)
class MinVolumeDecision:
    """The outcome of :func:`decide_min_volumes`.

    Attributes:
        min_volumes: ``{region name: mm³}`` in output order (the checkpoint's ``region_min_volumes``;
            0 = never removed).
        caps: ``{region name: mm³}``, the largest minimum each region could get (:func:`min_volume_caps`).
        dice_before: per-entity mean Dice without removal.
        dice_after: per-entity mean Dice with the chosen minimum volumes.
        trials: ``{region name: {minimum: mean foreground Dice}}`` for 0 and the candidates under the cap.
    """

    min_volumes: dict[str, float]
    caps: dict[str, float]
    dice_before: dict[str, float]
    dice_after: dict[str, float]
    trials: dict[str, dict[float, float]]


def decide_min_volumes(
    predictions: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    *,
    regions: Mapping[str, Sequence[int]],
    voxel_volume: float,
    caps: Mapping[str, float],
    candidates: Sequence[float] = MIN_VOLUME_CANDIDATES,
) -> MinVolumeDecision:
    """Choose each region's minimum volume on the validation cases (rule in the module docstring).

    Regions are decided in output order, each with the earlier ones removed at their chosen minimum.
    Each region's minimum is the one of 0 and the candidates up to its cap with the highest mean
    foreground Dice (mean over entities of the mean over cases); ties (within 1e-12) go to the largest.

    Args:
        predictions: ``{case: label map}`` after largest-component post-processing and growing.
        references: ``{case: reference label map}`` (same keys and shapes).
        regions: ordered ``{name: [label values]}`` (largest region first).
        voxel_volume: mm³ of one voxel of the label maps.
        caps: ``{region name: mm³}`` (:func:`min_volume_caps`); a region not named gets 0 (never removed).
        candidates: minimum volumes to try, mm³.

    Returns:
        The :class:`MinVolumeDecision` (every region at 0 when there are no cases).

    Raises:
        ConfigError: a case without a reference, shapes that differ, or an invalid candidate.
    """
    names = list(regions)
    region_lists = [list(v) for v in regions.values()]
    ordered = sorted(set(check_min_volumes(candidates, count=len(candidates), what="minimum volume candidates")) - {0.0})
    cases = sorted(predictions)
    for case in cases:
        if case not in references:
            raise ConfigError(f"minimum volume decision: no reference label map for validation case '{case}'")
        if predictions[case].shape != references[case].shape:
            raise ConfigError(f"minimum volume decision: case '{case}' has a prediction of shape "
                              f"{predictions[case].shape} and a reference of shape {references[case].shape}")

    def score(minimums: Sequence[float]) -> dict[str, float]:
        return mean_dice([case_dice(remove_small_regions(predictions[c], regions=region_lists, min_volumes=minimums,
                                                         voxel_volume=voxel_volume), references[c], regions)
                          for c in cases], names)

    chosen, before, current, trials = _greedy_per_region(
        names, start=0.0, candidates=lambda name: [c for c in ordered if c <= float(caps.get(name, 0.0))],
        score=score, takes=lambda new, best: new >= best - 1e-12, search=bool(cases))
    for i, name in enumerate(trials):
        logger.info("minimum volume of '%s': %g mm3 (cap %.0f mm3; mean validation Dice %s)", name, chosen[i],
                    float(caps.get(name, 0.0)), ", ".join(f"{t:g}: {d:.4f}" for t, d in trials[name].items()))
    return MinVolumeDecision(min_volumes=dict(zip(names, chosen)), caps={n: float(caps.get(n, 0.0)) for n in names},
                             dice_before=before, dice_after=current, trials=trials)


@dataclass(frozen=True)
class PostprocessingDecision:
    """The outcome of :func:`decide_postprocessing`.

    Attributes:
        postprocessing: ``{label name: {"largest_component": bool}}`` for every foreground label
            (the checkpoint's ``postprocessing`` section).
        dice_before: per-entity mean Dice without post-processing.
        dice_after: per-entity mean Dice with the chosen post-processing.
        trials: ``{label name: {"mean_before", "mean_after", "accepted"}}``, for the log.
    """

    postprocessing: dict[str, dict[str, bool]]
    dice_before: dict[str, float]
    dice_after: dict[str, float]
    trials: dict[str, dict[str, Any]]


def decide_postprocessing(
    predictions: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    *,
    labels: Mapping[str, int],
    entities: Mapping[str, Sequence[int]],
) -> PostprocessingDecision:
    """Decide whether keep-largest-component helps on the validation cases, as nnU-Net does.

    First all foreground labels together (:data:`ALL_FOREGROUND`: islands of the whole
    segmentation, e.g. false positives far from the tumour; only tried with two or more
    foreground labels), then each foreground label in increasing value. Each trial applies the
    already accepted groups plus the candidate (with
    :func:`brainseg_cli.inference.apply_largest_component`). The candidate is accepted when the
    mean foreground Dice rises by more than :data:`MIN_GAIN` and no entity's mean Dice falls.

    Args:
        predictions: ``{case: predicted label map}``.
        references: ``{case: reference label map}`` (same keys and shapes).
        labels: dataset labels, name -> value (background ignored).
        entities: the scored entities (:func:`validation_entities`).

    Returns:
        The :class:`PostprocessingDecision` (``postprocessing`` keys: :data:`ALL_FOREGROUND` when
        tried, then the label names).
    """
    cases = sorted(predictions)
    names = list(entities)
    foreground = sorted(((name, int(v)) for name, v in labels.items() if int(v) != 0), key=lambda kv: kv[1])
    candidates: list[tuple[str, list[int]]] = []
    if len(foreground) > 1:
        candidates.append((ALL_FOREGROUND, [v for _, v in foreground]))
    candidates += [(name, [value]) for name, value in foreground]

    def score(accepted: list[list[int]]) -> dict[str, float]:
        per_case = []
        for case in cases:
            pred = predictions[case]
            if accepted:
                pred = apply_largest_component(pred, labels_to_process=accepted)
            per_case.append(case_dice(pred, references[case], entities))
        return mean_dice(per_case, names)

    before = score([])
    current = dict(before)
    accepted: list[list[int]] = []
    decisions: dict[str, dict[str, bool]] = {}
    trials: dict[str, dict[str, Any]] = {}
    for name, group in candidates:
        trial = score([*accepted, group])
        mean_now = float(np.mean(list(current.values()))) if current else float("nan")
        mean_trial = float(np.mean(list(trial.values()))) if trial else float("nan")
        worse = [n for n in names if trial[n] < current[n] - 1e-12]
        ok = bool(cases) and mean_trial > mean_now + MIN_GAIN and not worse
        trials[name] = {"mean_before": mean_now, "mean_after": mean_trial, "accepted": ok,
                        "worse": worse}
        decisions[name] = {"largest_component": ok}
        if ok:
            accepted.append(group)
            current = trial
        logger.info("post-processing: largest component of '%s' %s (mean Dice %.4f -> %.4f%s)", name,
                    "on" if ok else "off", mean_now, mean_trial,
                    f"; worse: {', '.join(worse)}" if worse else "")
    return PostprocessingDecision(postprocessing=decisions, dice_before=before, dice_after=current, trials=trials)
