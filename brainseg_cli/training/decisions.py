"""The decisions made at the end of training, stored in each checkpoint.

For ``best.pt`` on the best epoch's validation predictions and for ``last.pt`` on the last epoch's:
keep-largest-component per label (:func:`~brainseg_cli.training.validation.decide_postprocessing`),
then, for region-based models, the threshold each region grows to from the post-processed labels
(:func:`~brainseg_cli.training.validation.decide_region_thresholds`, checkpoint key
``region_thresholds``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainseg_cli.checkpoint import load_checkpoint, save_checkpoint
from brainseg_cli.data.plan_schema import Plan, as_plan
from brainseg_cli.inference.postprocess import apply_largest_component, decided_groups
from brainseg_cli.training.batches import TrainingCases, case_iterator
from brainseg_cli.training.rundir import BEST, LAST
from brainseg_cli.training.validation import (
    ValidationResult,
    decide_postprocessing,
    decide_region_thresholds,
    validate,
)

logger = logging.getLogger(__name__)


def decide_and_store(run_dir: Path, *, model: nn.Module, dataset: TrainingCases, val_cases: Sequence[str],
                     plan: Plan | Mapping[str, Any], labels: Mapping[str, int], entities: Mapping[str, Sequence[int]],
                     validations: Mapping[str, ValidationResult | None], precision: str,
                     device: torch.device) -> tuple[dict[str, dict[str, bool]], dict[str, float]]:
    """Decide the post-processing and region thresholds of ``best.pt`` and ``last.pt``, each on its own weights.

    Keep-largest-component first; region-based models then get a growing threshold per region,
    decided on the post-processed labels (:func:`~brainseg_cli.training.validation.decide_region_thresholds`,
    stored as the checkpoint's ``region_thresholds``), the order in which ``predict`` applies them.
    :func:`fit` calls it at the end; called on a finished run folder (``validations`` empty) it makes
    the decisions again from the checkpoints' weights, e.g. after the decision rules changed.

    Args:
        validations: checkpoint file name (:data:`BEST`, :data:`LAST`) -> that epoch's validation
            (label maps, and probabilities for region-based models), or None where it is not at hand
            (it ran before a resume): the checkpoint's weights then predict the validation cases
            again. When both names hold the same validation (the best epoch is the last), the
            decision is made once.

    Returns:
        ``(postprocessing, region_thresholds)`` stored in ``best.pt`` (the ones :class:`TrainResult`
        reports; thresholds empty for softmax models); with no best checkpoint (validation never
        produced a finite Dice), post-processing off, no thresholds and nothing written.
    """
    off = {name: {"largest_component": False} for name, v in labels.items() if v}
    if not (run_dir / BEST).exists():
        logger.warning("no best checkpoint (validation never produced a finite Dice): post-processing stays off")
        return off, {}
    plan = as_plan(plan)
    region_based = plan.region_based
    regions = {name: list(values) for name, values in entities.items()} if region_based else None
    references = {case: dataset.load_case(case)[1] for case in val_cases}

    def complete(result: ValidationResult | None) -> bool:
        return (result is not None and set(result.predictions) == set(val_cases)
                and (not region_based or set(result.probabilities) == set(val_cases)))

    decided: dict[str, tuple[dict[str, dict[str, bool]], dict[str, float]]] = {}
    made: dict[int, tuple[Any, Any]] = {}  # id of a validation -> (that validation, its decisions)
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
            dice_after = decision.dice_after
            if regions is not None:
                groups = decided_groups(decision.postprocessing, labels=labels, regions=regions)
                processed = {case: apply_largest_component(pred, labels_to_process=groups) if groups else pred
                             for case, pred in result.predictions.items()}
                chosen = decide_region_thresholds(result.probabilities, processed, references, regions=regions)
                thresholds, dice_after = chosen.thresholds, chosen.dice_after
            made[id(result)] = (result, (decision, thresholds, dice_after))
        decision, thresholds, dice_after = made[id(result)][1]
        ckpt["postprocessing"] = decision.postprocessing
        ckpt["training"]["val_dice_postprocessed"] = dice_after
        if region_based:
            ckpt["region_thresholds"] = dict(thresholds)
        save_checkpoint(path, ckpt)
        decided[name] = (decision.postprocessing, dict(thresholds))
    return decided.get(BEST, (off, {}))

