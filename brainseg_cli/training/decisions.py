"""The decisions made at the end of training, stored in each checkpoint.

For ``best.pt`` on the best epoch's validation predictions and for ``last.pt`` on the last epoch's:
keep-largest-component per label (:func:`~brainseg_cli.training.validation.decide_postprocessing`),
then, for region-based models, the threshold each region grows to from the post-processed labels
(:func:`~brainseg_cli.training.validation.decide_region_thresholds`, checkpoint key
``region_thresholds``) and the volume under which a predicted region is judged absent
(:func:`~brainseg_cli.training.validation.decide_min_volumes`, checkpoint key ``region_min_volumes``).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainseg_cli.checkpoint import load_checkpoint, save_checkpoint
from brainseg_cli.data.plan_schema import Plan, as_plan
from brainseg_cli.inference.postprocess import apply_largest_component, decided_groups, grow_regions
from brainseg_cli.training.batches import TrainingCases, case_iterator
from brainseg_cli.training.rundir import BEST, LAST
from brainseg_cli.training.validation import (
    ValidationResult,
    decide_min_volumes,
    decide_postprocessing,
    decide_region_thresholds,
    min_volume_caps,
    validate,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decisions:
    """What :func:`decide_and_store` stored in ``best.pt``.

    Attributes:
        postprocessing: ``{name: {"largest_component": bool}}`` (the checkpoint's ``postprocessing``).
        region_thresholds: ``{region: growing threshold}`` (empty for softmax models).
        region_min_volumes: ``{region: mm³}`` under which a predicted region is removed (empty for
            softmax models; 0 = never).
    """

    postprocessing: dict[str, dict[str, bool]]
    region_thresholds: dict[str, float] = field(default_factory=dict)
    region_min_volumes: dict[str, float] = field(default_factory=dict)


def region_volumes(dataset: TrainingCases, cases: Sequence[str], *, regions: Mapping[str, Sequence[int]],
                   voxel_volume: float) -> dict[str, list[float]]:
    """``{region: [reference volume of each case, mm³]}`` from the cases' label voxel counts."""
    counts = [dataset.label_voxels(case) for case in cases]
    return {name: [voxel_volume * sum(c.get(int(v), 0) for v in values) for c in counts]
            for name, values in regions.items()}


def decide_and_store(run_dir: Path, *, model: nn.Module, dataset: TrainingCases, train_cases: Sequence[str],
                     val_cases: Sequence[str], plan: Plan | Mapping[str, Any], labels: Mapping[str, int],
                     entities: Mapping[str, Sequence[int]], validations: Mapping[str, ValidationResult | None],
                     precision: str, device: torch.device) -> Decisions:
    """Decide the post-processing of ``best.pt`` and ``last.pt``, each on its own weights.

    Keep-largest-component first; region-based models then get a growing threshold per region,
    decided on the post-processed labels (:func:`~brainseg_cli.training.validation.decide_region_thresholds`,
    stored as the checkpoint's ``region_thresholds``), and a minimum volume per region decided on the
    grown labels (:func:`~brainseg_cli.training.validation.decide_min_volumes`, capped by the training
    cases' reference volumes, stored as ``region_min_volumes``): the order in which ``predict`` applies
    them. :func:`fit` calls it at the end; called on a finished run folder (``validations`` empty) it
    makes the decisions again from the checkpoints' weights, e.g. after the decision rules changed.

    Args:
        train_cases: the cases the network trained on (their reference volumes cap the minimum volumes).
        validations: checkpoint file name (:data:`BEST`, :data:`LAST`) -> that epoch's validation
            (label maps, and probabilities for region-based models), or None where it is not at hand
            (it ran before a resume): the checkpoint's weights then predict the validation cases
            again. When both names hold the same validation (the best epoch is the last), the
            decision is made once.

    Returns:
        The :class:`Decisions` stored in ``best.pt`` (the ones :class:`TrainResult` reports); with no
        best checkpoint (validation never produced a finite Dice), post-processing off, no thresholds,
        no minimum volumes and nothing written.
    """
    off = {name: {"largest_component": False} for name, v in labels.items() if v}
    if not (run_dir / BEST).exists():
        logger.warning("no best checkpoint (validation never produced a finite Dice): post-processing stays off")
        return Decisions(postprocessing=off)
    plan = as_plan(plan)
    region_based = plan.region_based
    regions = {name: list(values) for name, values in entities.items()} if region_based else None
    references = {case: dataset.load_case(case)[1] for case in val_cases}
    voxel_volume = math.prod(float(s) for s in plan.target_spacing)
    caps = min_volume_caps(region_volumes(dataset, train_cases, regions=regions, voxel_volume=voxel_volume)) \
        if regions is not None else {}

    def complete(result: ValidationResult | None) -> bool:
        return (result is not None and set(result.predictions) == set(val_cases)
                and (not region_based or set(result.probabilities) == set(val_cases)))

    decided: dict[str, Decisions] = {}
    made: dict[int, tuple[Any, Decisions, dict[str, float]]] = {}  # id of a validation -> (it, its decisions, Dice)
    for name in (BEST, LAST):
        path = run_dir / name
        if not path.exists():
            continue
        ckpt = load_checkpoint(path)
        result = validations.get(name)
        if not complete(result):
            net = copy.deepcopy(model)
            net.load_state_dict({k: v.to(device) for k, v in ckpt["state_dict"].items()})
            result = validate(net, case_iterator(dataset, val_cases), plan=plan, entities=entities, precision=precision,
                              device=device, keep_probabilities=region_based)
        if id(result) not in made:  # the validation is kept with its decisions, so its id is not reused
            decision = decide_postprocessing(result.predictions, references, labels=labels, entities=entities)
            thresholds: dict[str, float] = {}
            minimums: dict[str, float] = {}
            dice_after = decision.dice_after
            if regions is not None:
                region_lists = list(regions.values())
                groups = decided_groups(decision.postprocessing, labels=labels, regions=regions)
                processed = {case: apply_largest_component(pred, labels_to_process=groups) if groups else pred
                             for case, pred in result.predictions.items()}
                chosen = decide_region_thresholds(result.probabilities, processed, references, regions=regions)
                thresholds = chosen.thresholds
                grown = {case: grow_regions(pred, result.probabilities[case], regions=region_lists,
                                            thresholds=list(thresholds.values())) for case, pred in processed.items()}
                kept = decide_min_volumes(grown, references, regions=regions, voxel_volume=voxel_volume, caps=caps)
                minimums, dice_after = kept.min_volumes, kept.dice_after
            made[id(result)] = (result, Decisions(decision.postprocessing, dict(thresholds), dict(minimums)), dice_after)
        _, decisions, dice_after = made[id(result)]
        ckpt["postprocessing"] = decisions.postprocessing
        ckpt["training"]["val_dice_postprocessed"] = dice_after
        if region_based:
            ckpt["region_thresholds"] = dict(decisions.region_thresholds)
            ckpt["region_min_volumes"] = dict(decisions.region_min_volumes)
        save_checkpoint(path, ckpt)
        decided[name] = decisions
    return decided.get(BEST, Decisions(postprocessing=off))

