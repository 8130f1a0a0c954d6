"""What a model's output channels mean in a run, and the training loss on them.

A plan is either softmax over its labels (targets are integer labels) or region-based (one sigmoid
channel per region, nnU-Net's BraTS training; targets are region masks). :class:`Outputs` reads
which from the plan and builds the targets; :func:`training_loss` builds the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from brainseg_cli.data.plan_schema import Plan, as_plan
from brainseg_cli.errors import ConfigError
from brainseg_cli.losses import DeepSupervisionLoss, build_loss, labels_to_regions
from brainseg_cli.training.validation import validation_entities


@dataclass(frozen=True)
class Outputs:
    """What the model's output channels mean, from the plan.

    Attributes:
        labels: ``{name: value}``.
        regions: ``{name: [label values]}`` (the plan's, possibly empty).
        region_based: one sigmoid channel per region (else softmax over the labels).
        entities: what validation scores (:func:`~brainseg_cli.training.validation.validation_entities`).
    """

    labels: dict[str, int]
    regions: dict[str, list[int]]
    region_based: bool
    entities: dict[str, Any]

    @classmethod
    def of(cls, plan: Plan, model: nn.Module) -> Outputs:
        """Read the plan and check that the model has one output per label or region.

        Raises:
            ConfigError: the model's output count differs from the plan's.
        """
        region_based = plan.region_based
        regions = {str(k): [int(v) for v in vs] for k, vs in plan.regions.items()}
        labels = dict(plan.labels)
        expected = len(regions) if region_based else len(labels)
        outputs_of_model = getattr(model, "num_classes", expected)
        if outputs_of_model != expected:
            what = (f"{expected} regions ({', '.join(regions)})" if region_based
                    else f"{expected} labels ({', '.join(labels)})")
            raise ConfigError(f"the model has {outputs_of_model} outputs but the plan needs {what}")
        entities = validation_entities(labels=labels, regions=regions, region_based=region_based)
        return cls(labels=labels, regions=regions, region_based=region_based, entities=dict(entities))

    def target(self, label: torch.Tensor) -> torch.Tensor:
        """Labels ``(B, *spatial)`` -> the loss target (region masks ``(B, R, *spatial)`` when region-based)."""
        return labels_to_regions(label, list(self.regions.values())) if self.region_based else label

    def val_target(self, label: np.ndarray) -> torch.Tensor:
        """One case's labels ``(*spatial)`` -> its loss target with a batch axis of 1."""
        return self.target(torch.from_numpy(np.asarray(label).astype(np.int64))[None])

    def no_postprocessing(self) -> dict[str, dict[str, bool]]:
        """Post-processing off for every foreground label (what checkpoints hold until the decisions)."""
        return {name: {"largest_component": False}
                for name, v in sorted(self.labels.items(), key=lambda kv: kv[1]) if v}


def training_loss(name: str, *, plan: Plan | Mapping[str, Any], model: nn.Module) -> nn.Module:
    """The training loss of a plan: ``loss(outputs, target) -> scalar``.

    Dice (+ CE, or + BCE for region-based plans' sigmoid outputs); the softmax Dice term leaves the
    background out (nnU-Net); Dice per sample or over the batch as ``plan.loss.batch_dice`` says
    (plans written before that key: per sample); region-based outputs weighted per region as
    ``plan.loss.region_weights`` says (output channel ``i`` is the plan's ``i``-th region); deep
    supervision when the model has it.

    Args:
        name: a registered loss (``"dice-ce"``, ``"dice"``).
        plan: the run's plan (``region_based`` and ``loss`` are read).
        model: the network (its ``deep_supervision`` and ``num_outputs``).
    """
    plan = as_plan(plan)
    region_based = plan.region_based
    options: dict[str, Any] = {"activation": "sigmoid" if region_based else "softmax",
                               "batch_dice": plan.loss.batch_dice}
    if not region_based:
        options["include_background"] = False
    elif plan.loss.region_weights:
        options["channel_weights"] = [plan.loss.region_weights.get(r, 1.0) for r in plan.regions]
    base_loss = build_loss(name, **options)
    num_outputs = int(getattr(model, "num_outputs", 1)) if getattr(model, "deep_supervision", False) else 1
    return DeepSupervisionLoss(base_loss, num_outputs) if num_outputs > 1 else base_loss
